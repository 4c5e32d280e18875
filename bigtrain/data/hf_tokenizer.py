"""Hugging Face tokenizer files that give exactly the ids of a sentencepiece BPE ``tokenizer.model``.

transformers converts ``tokenizer.model`` only inside ``from_pretrained(folder)`` (and needs protobuf);
``LlamaTokenizer(vocab_file=...)`` silently builds a 3-token vocabulary in 5.x. The Llama conversion
pre-tokenizes with ``Metaspace(prepend_scheme="first")``, which disagrees with sentencepiece on texts
that start with a space. sentencepiece with ``add_dummy_prefix`` and identity normalisation is exactly
"prepend ▁, replace every space by ▁, then BPE over the whole string", so that is the normaliser we
install, with no pre-tokenizer. Checked id-for-id on the whole embedded corpus (tests/test_tokenizer.py).

Choices written to tokenizer_config.json:
- ``tokenizer_class = PreTrainedTokenizerFast``: loads tokenizer.json verbatim in transformers 4.x and
  5.x. Naming ``LlamaTokenizer`` would make 5.x rebuild the (inexact) Llama pipeline on load.
- bos is added (``<s>`` by the post-processor in tokenizer.json, ``add_bos_token=True`` is informative:
  5.x ignores it when tokenizer.json exists), eos is not, like Llama.
- no pad token: pretraining packs documents and never pads. Set ``tok.pad_token = tok.eos_token``
  for batched inference (labels at pads must then be masked by the attention mask, not the id).
- ``split_special_tokens=True``: the literal text ``"<s>"`` in a document is tokenized as text, as
  sentencepiece does, instead of becoming the bos id.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from bigtrain.data.errors import DataError

HF_FILES = ("tokenizer.json", "tokenizer_config.json")
EDGE_CASES = ["", " ", "  two leading spaces", "trailing  ", "a\n b\n\n  c\t", "x<s>y</s><unk><mask>", "12345 6.0e-3",
              "ünïcödé ☃ 😀 中文", "▁already▁metaspace"]


def backend_tokenizer(model_file: Path, bos_id: int):
    """A ``tokenizers.Tokenizer`` converted from ``model_file`` with the exact sentencepiece pipeline.

    Its post-processor prepends bos (``<s>``) to every sequence, and nothing else.
    """
    from tokenizers import normalizers, processors
    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as tmp:  # holds only tokenizer.model: nothing stale to load instead
        shutil.copyfile(model_file, Path(tmp, "tokenizer.model"))
        converted = LlamaTokenizer.from_pretrained(tmp, local_files_only=True)
    backend = converted.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    backend.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                                           special_tokens=[("<s>", bos_id)])
    return backend


def write_hf_tokenizer(model_file: Path, out_dir: Path, model_max_length: int, bos_id: int,
                       mask_token: str | None = None) -> None:
    """Write tokenizer.json + tokenizer_config.json for ``model_file`` into ``out_dir``."""
    from transformers import PreTrainedTokenizerFast

    extra = {"mask_token": mask_token} if mask_token else {}
    hf = PreTrainedTokenizerFast(tokenizer_object=backend_tokenizer(model_file, bos_id), bos_token="<s>",
                                 eos_token="</s>", unk_token="<unk>", model_max_length=model_max_length,
                                 clean_up_tokenization_spaces=False, split_special_tokens=True, **extra)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        hf.save_pretrained(tmp)
        config_path = Path(tmp, "tokenizer_config.json")
        config = json.loads(config_path.read_text())
        config.update(tokenizer_class="PreTrainedTokenizerFast", add_bos_token=True, add_eos_token=False)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name in HF_FILES:
            Path(tmp, name).replace(out_dir / name)


def check_hf_matches(out_dir: Path, sp, texts: list[str]) -> None:
    """Raise if ``AutoTokenizer.from_pretrained(out_dir)`` disagrees with sentencepiece ``sp`` on any text.

    A guard against a transformers release changing its conversion: cheap next to training.
    """
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    texts = EDGE_CASES + texts
    ours = [[sp.bos_id(), *ids] for ids in sp.encode(texts)]
    theirs = hf(texts, verbose=False)["input_ids"]  # with specials: checks the bos template too
    for text, a, b in zip(texts, ours, theirs):
        if a != b:
            raise DataError(f"{out_dir}: the Hugging Face tokenizer disagrees with sentencepiece on {text[:60]!r}: "
                            f"{b[:20]} vs {a[:20]} (transformers conversion changed?)")
