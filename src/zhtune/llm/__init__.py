"""Decoder LLMs: model loading, LoRA/QLoRA (``models``), label scoring (``scoring``), ``zhtune lora`` (``lora``), ``zhtune zero-shot`` (``zeroshot``) and ``zhtune merge`` (``merge``).

The names below are imported on first use, so importing the package loads no torch.
"""

from zhtune import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "LlmConfig": "zhtune.llm.lora",
        "run_lora": "zhtune.llm.lora",
        "run_llm_branch": "zhtune.llm.lora",
        "add_arguments": "zhtune.llm.lora",
        "run_cli": "zhtune.llm.lora",
        "load_backend": "zhtune.llm.models",
    },
)
