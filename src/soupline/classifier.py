"""The classifier every ingredient is: a pretrained encoder + one Linear head on a pooled text vector.

`train.pooling` picks the text vector:
- `mean_normalized` (default): the masked mean of the encoder's last hidden states, unit norm:
  the vector sentence-transformers models (the built-in all-MiniLM-L6-v2 included) were trained
  to produce and the embed stage (so the linear probe) uses; with LP-FT the head starts as that
  probe. On 20newsgroups at 10 % (210 texts, 20 labels) this recipe reaches 0.742 test accuracy (3 selection
  seeds) against 0.550 for `cls` with a random head (seed 0; docs/recipe_quality_20newsgroups.md).
- `mean`: the same mean without the normalisation (a random head learns faster on it).
- `cls`: Hugging Face's own `AutoModelForSequenceClassification` (BERT: the [CLS] vector through
  the pooler's dense + tanh), for encoders fine-tuned that way.

A mean-pooled model folder holds `config.json` (the encoder's config + `soupline_pooling`) and
one `model.safetensors` whose keys are the encoder's under its `base_model_prefix` (BERT:
`bert.`) plus `classifier.*`, the same names `AutoModelForSequenceClassification` uses, so
soups, task vectors and LoRA target names are the same for both poolings.
`load_classifier(folder)` loads either kind; `AutoModel.from_pretrained(folder)` loads the
fine-tuned encoder of either.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

POOLING_KEY = "soupline_pooling"


@functools.cache
def mean_pool_class():
    """The MeanPoolClassifier class, defined on first use so that importing soupline does not import torch."""
    import torch
    from transformers import AutoModel
    from transformers.modeling_outputs import SequenceClassifierOutput

    class MeanPoolClassifier(torch.nn.Module):
        """encoder -> masked mean of the last hidden states (-> unit norm) -> dropout -> Linear(num_labels)."""

        def __init__(self, config, encoder=None):
            super().__init__()
            self.config = config
            encoder = encoder if encoder is not None else AutoModel.from_config(config, dtype=torch.float32)
            if getattr(encoder, "pooler", None) is not None:  # BERT's [CLS] pooler: unused here
                encoder.pooler = None
            self.prefix = encoder.base_model_prefix or "encoder"
            setattr(self, self.prefix, encoder)
            p = getattr(config, "classifier_dropout", None)
            self.dropout = torch.nn.Dropout(p if p is not None else getattr(config, "hidden_dropout_prob", 0.1))
            self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)

        @property
        def encoder(self):
            return getattr(self, self.prefix)

        def get_input_embeddings(self):
            return self.encoder.get_input_embeddings()

        def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
            """Logits (and the cross-entropy loss when `labels` are given); peft's extra keyword
            arguments (output_attentions, return_dict, ...) are accepted and ignored."""
            extra = {k: v for k, v in kwargs.items() if k in ("token_type_ids", "position_ids", "inputs_embeds")
                     and v is not None}
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            if attention_mask is None:
                pooled = hidden.mean(1)
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if self.config.soupline_pooling == "mean_normalized":
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            logits = self.classifier(self.dropout(pooled))
            loss = None if labels is None else torch.nn.functional.cross_entropy(logits.float(), labels)
            return SequenceClassifierOutput(loss=loss, logits=logits)

        def save_pretrained(self, folder, **_):
            """config.json + model.safetensors (peft's merge_and_unload hands this model back)."""
            from safetensors.torch import save_file

            Path(folder).mkdir(parents=True, exist_ok=True)
            self.config.save_pretrained(folder)
            save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()},
                      str(Path(folder) / "model.safetensors"), metadata={"format": "pt"})

    return MeanPoolClassifier


def init_model(model_path: str, label_names: list[str], head_init_seed: int, pooling: str = "mean_normalized"):
    """The shared starting point of every ingredient (and the base of task vectors): the pretrained
    encoder and a head drawn with `head_init_seed`."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized classifier" / "unused pooler" are expected, not news
    labels = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
              "label2id": {n: i for i, n in enumerate(label_names)}}
    config = AutoConfig.from_pretrained(model_path, **labels)
    config.dtype = torch.float32  # what the model is built in and its config.json says, whatever the checkpoint's
    if config.problem_type not in (None, "single_label_classification"):  # a multi-label or regression classifier's
        config.problem_type = "single_label_classification"  # softmax, as trained: pipeline() read sigmoid scores
    if pooling == "cls":
        from soupline.models import PADDING_OFFSET_POSITIONS, check_weights_loaded, load_tokenizer

        pad = load_tokenizer(model_path).pad_token_id
        if config.pad_token_id != pad and config.model_type not in PADDING_OFFSET_POSITIONS:
            config.pad_token_id = pad  # a decoder's head reads each text's last token that is not the batches' pad
        with torch.random.fork_rng(devices=[]):  # the head's draw leaves the caller's RNG as it was
            torch.random.default_generator.manual_seed(head_init_seed)  # the model is drawn on the CPU
            model, loading = AutoModelForSequenceClassification.from_pretrained(
                model_path, config=config, dtype=torch.float32, output_loading_info=True,
                ignore_mismatched_sizes=True)  # a classifier's head for another label count: drawn, said below
        # parameters the checkpoint lacks (a BERT saved without its pooler): drawn here, LoRA must train them in full
        model.soupline_drawn = sorted(loading["missing_keys"])
        prefix = f"{model.base_model_prefix}."
        mismatched = tuple(sorted((key, tuple(saved)) for key, saved, _ in loading["mismatched_keys"]))
        check_weights_loaded(model_path, [k for k in [*model.soupline_drawn, *dict(mismatched)]
                                          if k.startswith(prefix) and not k.startswith(f"{prefix}pooler.")])
        if mismatched:
            _warn_head_redrawn(model_path, mismatched, len(label_names))
        return model
    from soupline.models import load_encoder

    setattr(config, POOLING_KEY, pooling)
    config.architectures = ["MeanPoolClassifier"]
    encoder = load_encoder(model_path)  # FP32: a bf16 checkpoint trains in fp32
    with torch.random.fork_rng(devices=[]):  # torch.manual_seed would reseed CUDA's generators too, unrestored
        torch.random.default_generator.manual_seed(head_init_seed)
        model = mean_pool_class()(config, encoder)
        torch.nn.init.normal_(model.classifier.weight, std=getattr(config, "initializer_range", 0.02))
        torch.nn.init.zeros_(model.classifier.bias)
    return model


@functools.cache
def _warn_head_redrawn(model_path: str, mismatched: tuple[tuple[str, tuple], ...], labels: int) -> None:
    """One warning (per process) when `model` is a sequence classifier saved for another label count: its head
    cannot take this data's labels, so it is drawn afresh, as transformers' `ignore_mismatched_sizes=True` does."""
    import warnings

    saved = ", ".join(f"{key} {list(shape)}" for key, shape in mismatched)
    warnings.warn(f"model {str(model_path)!r} is a classifier saved for another label count ({saved}); the data has "
                  f"{labels} labels, so train.pooling: cls starts from a fresh head (as transformers' "
                  "ignore_mismatched_sizes=True gives), not the saved one", stacklevel=3)


def pooling_of(folder: str | Path) -> str:
    """`mean`, `mean_normalized` or `cls`: how the model saved in `folder` pools a text."""
    return json.loads((Path(folder) / "config.json").read_text()).get(POOLING_KEY, "cls")


def is_classifier(folder: str | Path) -> bool:
    """Whether `folder` holds a classifier with a trained head (an ingredient, a soup, a Hugging Face
    `...ForSequenceClassification`), not a bare encoder such as the base model, whose head would be drawn at
    random when loaded."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    config = json.loads(path.read_text())
    architectures = config.get("architectures") or []
    return POOLING_KEY in config or any(a.endswith("ForSequenceClassification") for a in architectures)


def load_classifier(folder: str | Path):
    """A trained ingredient or soup, whichever pooling it was trained with.

    A mean-pooled one is built without drawing its weights (transformers' `no_init_weights`): every tensor is read
    from the folder next, strictly, and the draw made a load 3x slower (all-MiniLM-L6-v2: 0.33 s -> 0.12 s, once per
    model evaluate scores) and moved torch's random state."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4 (pyproject admits >= 4.44) kept it in modeling_utils
        from transformers.modeling_utils import no_init_weights
    from transformers.utils import logging as hf_logging

    if pooling_of(folder) == "cls":
        return AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    from soupline.soup import load_state

    hf_logging.set_verbosity_error()
    with no_init_weights():
        model = mean_pool_class()(AutoConfig.from_pretrained(folder))
    model.load_state_dict(load_state(folder))
    return model
