"""Interoperability with other frameworks: Hugging Face ``transformers`` LLaMA checkpoints
(:mod:`megatron_mile.interop.hf_llama`; command lines ``mile-export-hf`` and ``mile-import-hf``)."""
