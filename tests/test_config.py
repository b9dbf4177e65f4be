"""params.yaml validation: defaults, overrides, and one clear line for every mistake."""

import re

import pytest
import yaml

from soupline import config
from soupline.errors import SouplineError
from tests.conftest import ROOT


def test_repo_params_validate():
    params = config.load(ROOT / "params.yaml")
    assert params.select.method in config.REGISTRY
    assert params.model_dump() == config.Params.model_validate(yaml.safe_load((ROOT / "params.yaml").read_text())).model_dump()


def test_source_paths_name_the_built_in_corpora_without_importing_pandas():
    """`prepare.source_paths` (every stage key's input files) took the built-in corpora's names from soupline.data,
    which imported pandas: 1.0-1.3 s of a no-op `soupline run`, which reads no data. config keeps the names; they
    are the corpora soupline.corpora loads."""
    import subprocess
    import sys

    from soupline import corpora

    assert config.BUILTIN_CORPUS_NAMES == set(corpora.BUILTIN_CORPORA)
    code = ("import sys; from soupline import config; p = config.load(sys.argv[1]); "
            "print(p.prepare.source_paths(), p.prepare.model_copy(update={'source': 'a.csv'}).source_paths(), "
            "'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "params.yaml")], capture_output=True, text=True)
    assert out.stdout.split("\n")[0] == "[] ['a.csv'] False", out.stderr


def test_dotted_overrides_parse_yaml_values(tmp_path):
    p = config.load(tmp_path / "missing.yaml", ["select.budget=150", "select.kmeans.niter=3",
                                                 "train.learning_rates=[1e-4, 2e-4]", "select.method=random"])
    assert p.select.budget == 150 and isinstance(p.select.budget, int)
    assert p.select.kmeans.niter == 3
    assert p.train.learning_rates == [1e-4, 2e-4]
    assert p.select.method == "random"


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 (PyYAML) reads `1e-3` as a string; params read it as YAML 1.2 and DVC do, in overrides and files."""
    path = tmp_path / "params.yaml"
    path.write_text("select:\n  budget: 5e-2\ntrain:\n  learning_rates: [1e-4, 2E-4]\n  sweep: {weight_decay: [1e-3]}\n")
    p = config.load(path, ["study.budgets=[1e-2, 2]", "soup.learned.lr=+5e-2"])
    assert p.select.budget == 0.05 and p.train.learning_rates == [1e-4, 2e-4] and p.study.budgets == [0.01, 2]
    assert p.soup.learned.lr == 0.05 and [i.name for i in p.train.ingredients()][0] == "lr0.0001-seed0-weight_decay0.001"


@pytest.mark.parametrize("override, expected", [
    ("select.metod=kmeans", "unknown key 'select.metod' (did you mean 'select.method'?)"),
    ("trian.epochs=3", "unknown key 'trian' (did you mean 'train'?)"),
    ("select.kmeans.nitr=3", "unknown key 'select.kmeans.nitr' (did you mean 'select.kmeans.niter'?)"),
    # a key given without its section, or under the wrong one: the keys of that name elsewhere
    ("epochs=3", "unknown key 'epochs' (did you mean 'train.epochs' or 'soup.learned.epochs'?)"),
    ("select.epochs=3", "unknown key 'select.epochs' (did you mean 'train.epochs' or 'soup.learned.epochs'?)"),
    ("method=random", "unknown key 'method' (did you mean 'model' or 'select.method' or 'train.method'?)"),
    ("select.method=kmens", "unknown selection method 'kmens' (did you mean 'kmeans'?)"),
    ("prepare.label_names=[a, a, b]", "prepare.label_names: repeats a name: ['a', 'a', 'b']; give each integer "
                                      "label its own"),
    ("prepare.text_column=[text, text]", "prepare.text_column: names column 'text' 2 times; name each column once"),
    ("prepare.keep_columns=[a, b, a]", "prepare.keep_columns: names column 'a' 2 times"),
    # `train` as datasets names the pool split: the unknown key first (was 'splits.pool: Field required'), and no
    # section of that name elsewhere offered for it (the `train` section)
    ("prepare.splits={train: a.csv, validation: b.csv}", "unknown key 'prepare.splits.train' (did you mean "
                                                         "'prepare.splits.pool'?)"),
    # a number where a column name goes: no pydantic branch name ('prepare.text_column.str') in the key
    ("prepare.text_column=010", "params: prepare.text_column: Input should be a valid string (YAML read it as the "
                                "number 10: quote the name as you wrote it)"),
    ("prepare.text_column=[text, 5]", "params: prepare.text_column.1: Input should be a valid string (YAML read it as "
                                      "the number 5"),
    # a section named without its parent still gets it offered
    ("gotd={label_weight: 0.1}", "unknown key 'gotd' (did you mean 'select.gotd'?)"),
    # YAML reads `{budget:0.2}` as the key 'budget:0.2' with no value
    ("select={budget:0.2}", "unknown key 'select.budget:0.2' (did you mean 'select.budget'?); YAML needs a space "
                            "after ':' (budget: 0.2)"),
    ("train.sweep={epochs:1}", "train.sweep.epochs:1: Input should be a valid list (got None); YAML needs a space "
                               "after ':' (epochs: 1)"),
    ("select.budget=0", "select.budget: budget must be > 0"),
    ("select.budget=-3", "select.budget: budget must be > 0"),
    ("select.budget=1.5", "fractional budget must be in (0, 1]"),
    ("select.budget=abc", "select.budget: budget must be a fraction in (0, 1] or a count >= 1, got 'abc'"),
    ("select.budget='0.2'", "select.budget: budget must be a number, got the text '0.2' (quoted in YAML); write it "
                            "without quotes"),
    ("select.budget=true", "select.budget: budget must be a fraction in (0, 1] or a count >= 1, got True"),
    ("study.budgets=[0.1, true]", "study.budgets: budget must be a fraction in (0, 1] or a count >= 1, got True"),
    ("device=tpu", "device: device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ("prepare.test_size=0.85", "validation_size + test_size is 0.95; it must leave at least 10% for the pool"),
    ("train.learning_rates=[0.0]", "learning rates must be > 0"),
    ("train.learning_rates=[.nan]", "train.learning_rates.0: Input should be a finite number (got nan)"),
    ("train.learning_rates=.inf", "train.learning_rates.0: Input should be a finite number (got inf)"),
    ("train.weight_decay=.inf", "train.weight_decay: Input should be a finite number (got inf)"),
    ("select.dnc.temperature=.inf", "select.dnc.temperature: Input should be a finite number (got inf)"),
    ("select.budget=.nan", "select.budget: budget must be a fraction in (0, 1] or a count >= 1, got nan"),
    ("study.budgets=[0.1, .nan]", "study.budgets: budget must be a fraction in (0, 1] or a count >= 1, got nan"),
    ("soup.methods=[stew]", "soup.methods.0"),
    ("soup.methods=[uniform, greedy, uniform]", "soup.methods: ['uniform'] listed more than once"),
    ("soup.ties.top_k=0", "soup.ties.top_k"),
    ("soup.dare.drop=1", "soup.dare.drop"),
    ("soup.dare.dorp=0.1", "did you mean 'soup.dare.drop'?"),
    ("train.lr=1", "unknown key 'train.lr' (did you mean 'train.learning_rates' or 'train.lora' or "
                   "'soup.learned.lr'?)"),
    ("embed.bs=8", "unknown key 'embed.bs' (did you mean 'embed.batch_size'?)"),
    ("train.head_lr=1", "unknown key 'train.head_lr' (did you mean 'train.head_learning_rate' or 'train.head_init'?)"),
    ("soup.methods=[gredy]", "soup.methods.0: Input should be 'uniform', 'greedy', 'ties', 'dare' or 'learned' "
                             "(got 'gredy'; did you mean 'greedy'?)"),
    ("train.epochs=true", "train.epochs: expects a number, not a boolean (got True: YAML reads unquoted true/false "
                          "as a boolean)"),
    ("train.keep_replaced=true", "train.keep_replaced: expects a number, not a boolean"),
    ("select.dnc.q=column: rating", "select.dnc.q: Input should be a valid string (YAML read 'column: rating' as a "
                                    "mapping, for the space after ':'; write column:rating)"),
    ("train.early_stopping_patience=false", "train.early_stopping_patience: expects a number, not a boolean"),
    ("select.kmeans.niter=True", "select.kmeans.niter: expects a number, not a boolean"),
    ("train.seeds=[0, true]", "train.seeds: expects numbers, not booleans (YAML reads unquoted true/false as a "
                              "boolean)"),
    ("train.sweep={epochs: [1, true]}", "sweep point {'epochs': True}: epochs: expects a number, not a boolean"),
    ("train.seeds=[0.5]", "train.seeds.0: Input should be a valid integer, got a number with a fractional part (got "
                          "0.5)"),
    ("prepare.label_names=[2001-12-14, b]", "prepare.label_names.0: Input should be a valid string (YAML read it as "
                                            "the date 2001-12-14: quote the name as you wrote it)"),
    ("select.stratify=true", "select.stratify: Input should be 'none', 'label' or 'balanced' (got True: YAML reads "
                             "unquoted true/false as a boolean)"),
    ("train.epochs=yes", "train.epochs: Input should be a valid integer, unable to parse string as an integer (got "
                         "'yes')"),  # YAML 1.2, as DVC: yes/no/on/off are text
    ("study.methods=[kmeans, random, kmeans]", "study.methods: ['kmeans'] listed more than once; each cell is run once"),
    ("study.budgets=[0.1, 0.10]", "study.budgets: ['0.1'] listed more than once"),
    ("study.seeds=[0, 0]", "study.seeds: ['0'] listed more than once"),
    ("seed=-1", "seed: Input should be greater than or equal to 0 (got -1)"),
    ("select.seed=-3", "select.seed: Input should be greater than or equal to 0"),
    ("train.seeds=[0, -1]", "train.seeds.1: Input should be greater than or equal to 0"),
    ("train.head_init_seed=-1", "train.head_init_seed: Input should be greater than or equal to 0"),
    ("soup.dare.seed=-1", "soup.dare.seed"),
    ("soup.learned.seed=-1", "soup.learned.seed"),
    ("seed=4294967296", "seed: Input should be less than 2147483648"),
    # faiss's C ints: an OverflowError traceback from inside faiss, after prepare and embed had run
    ("select.kmeans.niter=1000000000000", "select.kmeans.niter: Input should be less than 2147483648"),
    ("select.dnc.nredo=4294967296", "select.dnc.nredo: Input should be less than 2147483648"),
    ("select.dealrec.strata=10000000000000000000", "select.dealrec.strata: Input should be less than 2147483648"),
    # beyond float32, in which torch computes: the optimizer's RuntimeError traceback at the first step, and a
    # GOT-D cost of inf read as "the pool and target coincide"
    ("train.learning_rates=[1e-4, 1e300]", "train.learning_rates: is beyond float32's range (+-3.4e+38), in which "
                                           "torch and faiss compute; give a number within it (got [0.0001, 1e+300])"),
    ("select.gotd.label_weight=1e300", "select.gotd.label_weight: is beyond float32's range"),
    ("soup.learned.lr=1e300", "soup.learned.lr: is beyond float32's range"),  # Adam's traceback, as train's
    # a quoted number, which pydantic reads as one: it passed the check and was the optimizer's traceback again
    ("train.learning_rates=['1e39']", "train.learning_rates: is beyond float32's range (+-3.4e+38), in which torch "
                                      "and faiss compute; give a number within it (got ['1e39'])"),
    ("train.weight_decay='1e39'", "train.weight_decay: is beyond float32's range"),
    # validation or test files alone: pydantic's bare "Field required" said neither what nor how
    ("prepare.splits.test=b.csv", "prepare.splits.pool: missing: splits of your own start from the pool's file "
                                  "(prepare.splits.pool: <file>); or set prepare.splits: null to split prepare.source"),
    ("study.cross_soups=true", "params: study.cross_soups needs ingredients with one shared initialisation"),
    ("evaluate.final=bogus", "evaluate.final: Input should be 'auto', 'best_ingredient', 'uniform', 'greedy', "
                             "'ties', 'dare' or 'learned' (got 'bogus')"),
    ("evaluate.final=unifrom", "evaluate.final: Input should be 'auto', 'best_ingredient', 'uniform', 'greedy', "
                               "'ties', 'dare' or 'learned' (got 'unifrom'; did you mean 'uniform'?)"),
])
def test_bad_params_one_line(tmp_path, override, expected):
    with pytest.raises(SouplineError) as err:
        config.load(tmp_path / "missing.yaml", [override])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)



@pytest.mark.parametrize("overrides, expected", [
    (["evaluate.final=learned"], "params: evaluate.final is learned, which soup.methods ['uniform', 'greedy', "
                                 "'ties', 'dare'] does not make: add it to soup.methods, or set evaluate.final to "
                                 "auto or best_ingredient"),
    (["evaluate.final=ties", "train.method=probe"],
     "params: evaluate.final is ties, but this run makes no soups (train.method: probe fits one deterministic "
     "ingredient); set evaluate.final to auto or best_ingredient"),
    (["evaluate.final=uniform", "train.seeds=[0]", "train.learning_rates=[1e-4]"],
     "params: evaluate.final is uniform, but this run makes no soups (one ingredient, lr0.0001-seed0; a soup averages "
     "2 or more: list more train.learning_rates, train.seeds or train.sweep values); set evaluate.final to auto or "
     "best_ingredient"),
])
def test_a_headline_soup_the_run_cannot_make_is_one_line_before_any_work(tmp_path, overrides, expected):
    """`evaluate.final` naming a soup not made would be found by evaluate, after every ingredient was trained; the
    reason is the soup stage's own (`no_soup_reason`)."""
    with pytest.raises(SouplineError) as err:
        config.load(tmp_path / "missing.yaml", overrides)
    assert str(err.value) == expected
    for fine in (["evaluate.final=ties"], ["evaluate.final=best_ingredient", "train.method=probe"],
                 ["evaluate.final=learned", "soup.methods=[learned]"]):
        assert config.load(tmp_path / "missing.yaml", fine).evaluate.final == fine[0].split("=")[1]


@pytest.mark.parametrize("overrides, expected", [
    (["trian.epochs=3", "select.budget=0"],
     "params: 2 problems: 1) unknown key 'trian' (did you mean 'train'?); 2) select.budget: budget must be > 0 (a "
     "fraction in (0, 1] or a count) (got 0)"),
    # unknown keys first, each with its guess; a union's value once, by the branch that got furthest
    (["select.budget=0", "prepare.text_column=[text, 5]", "selct.method=random"],
     "params: 3 problems: 1) unknown key 'selct' (did you mean 'select'?); 2) prepare.text_column.1: Input should be "
     "a valid string (YAML read it as the number 5: quote the name as you wrote it); 3) select.budget: budget must "
     "be > 0 (a fraction in (0, 1] or a count) (got 0)"),
    # a sweep point's own problems, all of them
    (["train.sweep={epochs: [true], warmup_ratio: [-1]}"],
     "params: train: sweep point {'epochs': True, 'warmup_ratio': -1}: 2 problems: 1) epochs: expects a number, not "
     "a boolean (got True: YAML reads unquoted true/false as a boolean); 2) warmup_ratio: Input should be greater "
     "than or equal to 0 (got -1)"),
    # the pool's missing file is the misspelt key's, not a second problem
    (["prepare.splits={train: a.csv}"], "params: unknown key 'prepare.splits.train' (did you mean "
                                        "'prepare.splits.pool'?)"),
])
def test_every_params_problem_is_named_in_one_line(tmp_path, overrides, expected):
    """Several bad keys: each named, in one line (it named the first, then "(and 1 more)"), so one pass mends all."""
    with pytest.raises(SouplineError) as err:
        config.load(tmp_path / "missing.yaml", overrides)
    assert str(err.value) == expected


SECTIONS = ("prepare", "embed", "select", "train", "soup", "evaluate", "study")


def test_many_params_problems_are_counted_beyond_the_first_five(tmp_path):
    with pytest.raises(SouplineError) as err:
        config.load(tmp_path / "missing.yaml", [f"{section}.x{i}=1" for i, section in enumerate(SECTIONS)])
    assert str(err.value).startswith("params: 7 problems: 1) unknown key 'prepare.x0'; valid keys: ")
    assert [f"{i}) unknown key '{section}.x{i - 1}'" in str(err.value) for i, section in enumerate(SECTIONS, 1)] \
        == [True] * 5 + [False] * 2
    assert str(err.value).endswith(" (and 2 more)") and "\n" not in str(err.value)


def test_unknown_keys_of_one_section_are_one_problem(tmp_path):
    """Two typos in one section each repeated "; valid keys: [...]", the whole list, twice: one problem per section
    names every unknown key there, each with its guess, and the valid keys once; colon hints are one too."""
    dealrec = list(config.Params.model_fields["select"].annotation.model_fields["dealrec"].annotation.model_fields)
    with pytest.raises(SouplineError) as err:
        config.load(tmp_path / "missing.yaml", ["select.dealrec.aaa=1", "select.dealrec.scor=el2n", "train.qqq=2",
                                                "select.dealrec.bbb=2", "select.budget=0"])
    assert str(err.value) == (
        "params: 3 problems: 1) unknown keys 'select.dealrec.aaa', 'select.dealrec.scor' (did you mean "
        f"'select.dealrec.score'?) and 'select.dealrec.bbb'; valid keys: {dealrec}; 2) unknown key 'train.qqq'; valid "
        f"keys: {list(config.TrainParams.model_fields)}; 3) select.budget: budget must be > 0 (a fraction in (0, 1] "
        "or a count) (got 0)")
    with pytest.raises(SouplineError) as err:  # every key guessed: no list, as for one key
        config.load(tmp_path / "missing.yaml", ["select={metod: random, budgt:0.2}"])
    assert str(err.value) == ("params: unknown keys 'select.metod' (did you mean 'select.method'?) and "
                              "'select.budgt:0.2' (did you mean 'select.budget'?); YAML needs a space after ':' "
                              "(budgt: 0.2)")


def test_override_syntax_error(tmp_path):
    with pytest.raises(SouplineError, match=r"not key=value \(example: select.method=kmeans\)$"):
        config.load(tmp_path / "x.yaml", ["select.method"])
    # what the shell made of spaces around '=' or inside unquoted brackets, with a hint at why
    spaced = "; write it as one word, with no spaces around '=' (select.budget=0.3)"
    for argv in (["select.budget=", "0.3"], ["select.budget", "=", "0.3"], ["select.budget", "=0.3"]):
        with pytest.raises(SouplineError, match=re.escape(spaced) + "$"):
            config.load(tmp_path / "x.yaml", argv)
    with pytest.raises(SouplineError, match=r"is not valid YAML: .*; the shell split it at a space: quote the whole "):
        config.load(tmp_path / "x.yaml", ["prepare.splits={pool:", "a.csv}"])
    with pytest.raises(SouplineError, match=r"^override 'train.seeds=\[0': the value is not valid YAML"):
        config.load(tmp_path / "x.yaml", ["train.seeds=[0"])


def test_dotted_override_fills_a_section_that_is_null_in_params_yaml():
    params = config.load(ROOT / "params.yaml",
                         ["prepare.splits.pool=a.csv", "prepare.splits.test=b.csv"])
    assert params.prepare.splits.model_dump() == {"pool": "a.csv", "validation": None, "test": "b.csv"}
    with pytest.raises(SouplineError, match=r"override 'seed.x=1': 'seed' is not a section"):
        config.apply_overrides({"seed": 42}, ["seed.x=1"])


def test_invalid_yaml_file_says_what_and_where(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 1\nselect:\n  method: [unclosed\n")
    with pytest.raises(SouplineError) as err:  # PyYAML's first line alone was `while parsing a flow sequence`
        config.load(bad)
    assert str(err.value) == (f"{bad} is not valid YAML: expected ',' or ']', but got '<stream end>' at line 4, "
                              "column 1 (while parsing a flow sequence from line 3, column 11)")
    bad.write_text("select:\n  method: kmeans\n   budget: 3\n")  # one space too many
    with pytest.raises(SouplineError, match=r"YAML: mapping values are not allowed here at line 3, column 10$"):
        config.load(bad)
    with pytest.raises(SouplineError, match=r"^override 'train.seeds=\[0, 1': the value is not valid YAML: expected "
                                            r"',' or '\]', but got '<stream end>' at line 1, column 6 "):
        config.load(bad.with_name("missing.yaml"), ["train.seeds=[0, 1"])


@pytest.mark.parametrize("text", ["", "# all commented out\n# seed: 1\n"])
def test_an_empty_params_file_is_one_line_not_the_defaults(tmp_path, text):
    empty = tmp_path / "params.yaml"
    empty.write_text(text)  # the defaults would run the whole built-in corpus with the built-in model
    with pytest.raises(SouplineError, match=r"params.yaml is empty \(or only comments\); put the params in it"):
        config.load(empty)
    empty.write_text("{}\n")  # said on purpose: every default
    assert config.load(empty) == config.load(tmp_path / "missing.yaml")


def test_a_key_given_twice_is_one_line_not_the_last_one_silently(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 1\nselect:\n  budget: 0.1\n  method: random\n  budget: 0.5\n")
    with pytest.raises(SouplineError, match=r"not valid YAML: 'budget' appears twice in one mapping \(line 5\); keep one"):
        config.load(bad)
    with pytest.raises(SouplineError, match=r"override .*: 'epochs' appears twice in one mapping \(line 1\); keep one$"):
        config.load(ROOT / "missing.yaml", ["train.sweep={epochs: [1], epochs: [2]}"])  # an override's value too
    bad.write_text("base: &b {budget: 0.1}\nselect:\n  <<: *b\n  budget: 0.5\n")  # a merge key's override is no repeat
    assert yaml.load(bad.read_text(), Loader=config._UniqueKeyLoader)["select"] == {"budget": 0.5}


def test_params_yaml_lists_every_key():
    """`dvc exp run -S key=value` can only set keys params.yaml has: every field of every section and method."""
    from pydantic import BaseModel

    from soupline.select import REGISTRY

    listed = yaml.safe_load((ROOT / "params.yaml").read_text())
    missing = []

    def walk(model: type[BaseModel], tree: dict, prefix: str) -> None:
        for name, field in model.model_fields.items():
            sub = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) \
                else None
            if sub is not None and not sub.model_fields:  # a method without settings (random)
                continue
            if not isinstance(tree, dict) or name not in tree:
                missing.append(prefix + name)
            elif sub is not None:
                walk(sub, tree[name], f"{prefix}{name}.")

    walk(config.Params, listed, "")
    for name, method in REGISTRY.items():
        if method.config.model_fields:
            walk(method.config, listed["select"].get(name), f"select.{name}.")
    assert not missing, f"params.yaml lacks {missing}"


def test_params_yaml_holds_the_defaults():
    """The shipped params.yaml is the code's defaults: a default changed in a config class (GOT-D's `chunk`, 8192 ->
    1024 in session 35) must change params.yaml too, or every pipeline run keeps the old value."""
    listed = yaml.safe_load((ROOT / "params.yaml").read_text())
    differ = []

    def walk(file, default, path: str) -> None:
        if isinstance(file, dict) and isinstance(default, dict):
            for key in file:
                walk(file[key], default.get(key), f"{path}.{key}" if path else key)
        elif file != default:
            differ.append(f"{path}: params.yaml {file!r}, default {default!r}")

    walk(listed, config.Params().model_dump(), "")
    assert not differ, differ


def _readme_params_rows() -> list[tuple[list[str], list[str]]]:
    """The README's params table: each row's keys (`train.epochs` / `min_steps` -> train.epochs, train.min_steps)
    and their defaults as written (`6 / 60`)."""
    text = (ROOT / "README.md").read_text().split("## Parameters (`params.yaml`)", 1)[1]
    rows = []
    for line in text.split("\n| `select.method` | what it does |", 1)[0].splitlines():
        if not line.startswith("| `"):
            continue
        keys, default = line.split(" | ")[:2]
        names = re.findall(r"`([^`]+)`", keys)
        section = names[0].rpartition(".")[0]
        rows.append(([names[0], *(f"{section}.{n}" if section else n for n in names[1:])],
                     default.split(" / ") if len(names) > 1 else [default]))
    return rows


def test_the_readme_params_table_has_every_key_with_its_default():
    """The README's params table is a third copy of the defaults (with config.py and params.yaml): every key outside
    a method's own settings has a row, and each row's default is the code's (read as params.yaml reads it). A
    method's settings are in the selection-methods table: each is named in its method's row."""
    defaults = config.Params().model_dump(mode="json")
    documented, wrong = set(), []
    for keys, written in _readme_params_rows():
        if keys == ["select.<method>.*"]:
            continue
        assert len(keys) == len(written), f"README params row {keys}: {len(written)} defaults for {len(keys)} keys"
        for key, text in zip(keys, written):
            value = defaults
            for part in key.split("."):
                value = value[part]
            documented.add(key)
            if yaml.load(text, Loader=config._UniqueKeyLoader) != value:  # YAML 1.2 numbers, as params.yaml
                wrong.append(f"{key}: README {text!r}, default {value!r}")
    assert not wrong, wrong
    leaves = [k for k in config._dotted_keys() if config._model_at(tuple(k.split("."))) is None]
    is_setting = re.compile(r"select\.\w+\.\w+").fullmatch  # select.<method>.<setting>
    missing = [k for k in leaves if not is_setting(k) and not any(k == d or k.startswith(f"{d}.") for d in documented)]
    assert not missing, f"params with no row in the README's params table: {missing}"
    table = (ROOT / "README.md").read_text().split("| `select.method` | what it does | settings |", 1)[1]
    method_rows = dict(re.findall(r"^\| `(\w+)` \|(.*)$", table.split("\n\n", 1)[0], re.M))
    unnamed = [k for k in leaves if is_setting(k) and f"`{k.split('.')[2]}`" not in method_rows[k.split(".")[1]]]
    assert not unnamed, f"method settings the README's selection-methods table does not name: {unnamed}"


def test_dvc_yaml_mirrors_layout_and_params():
    """dvc.yaml outs are the paths tasks/layout.py writes; its params keys exist in Params."""
    from tasks.layout import Layout

    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    lay = Layout()
    assert dvc["prepare"]["outs"] == [str(lay.prepared)]
    assert dvc["embed"]["outs"] == [str(lay.embeddings)]
    assert dvc["select"]["outs"] == [str(lay.selection.parent)]
    assert dvc["train"]["outs"] == [{str(lay.ingredients): {"persist": True}},
                                    {str(lay.curves): {"cache": False, "persist": True}}]
    assert dvc["soup"]["outs"] == [{str(lay.soups): {"persist": True}}]
    assert "data/raw" in dvc["prepare"]["deps"] and (ROOT / "data/raw/.gitkeep").exists()  # a fresh clone has it
    # the code that makes the soups and scores greedy's candidates: editing it re-runs soup under `dvc repro` too
    assert {"src/soupline/soup.py", "src/soupline/learned_soup.py", "src/soupline/evaluate.py"} <= set(
        dvc["soup"]["deps"])
    from tasks import keys

    fields = config.Params.model_fields
    for stage in dvc:
        for key in keys.stage_spec(stage)["params"]:  # both spellings: `a.b` and `{params.yaml: [a.b]}`
            head, _, tail = key.partition(".")
            assert head in fields, key
            if tail:
                assert tail in fields[head].annotation.model_fields, key


def test_a_params_file_not_utf8_or_a_folder_is_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_bytes(b"seed: 1\nmodel: caf\xe9\n")
    with pytest.raises(SouplineError, match=r"params.yaml is not UTF-8 \(byte 0xe9 at offset 18\); re-save it as UTF-8"):
        config.load(bad)
    with pytest.raises(SouplineError, match=r"params file '.*' is a folder; give the params file in it$"):
        config.load(tmp_path)


def test_train_sweep_is_a_product_of_any_train_keys():
    p = config.load(ROOT / "missing.yaml", ["train.learning_rates=[1e-4]", "train.seeds=[0, 1]",
                                            "train.sweep={epochs: [2, 3], lora.r: [4, 8], method: [lora]}"])
    ings = p.train.ingredients()
    assert [i.name for i in ings][:2] == ["lr0.0001-seed0-epochs2-lora.r4-methodlora",
                                          "lr0.0001-seed0-epochs2-lora.r8-methodlora"]
    assert len(ings) == 1 * 2 * 2 * 2 * 1
    assert {(i.seed, i.train.epochs, i.train.lora.r) for i in ings} == {
        (s, e, r) for s in (0, 1) for e in (2, 3) for r in (4, 8)}
    assert all(i.train.method == "lora" and i.train.sweep == {} for i in ings)
    assert config.load(ROOT / "missing.yaml").train.ingredients()[0].name == "lr0.0001-seed0"


def test_a_sweep_axis_is_a_duplicate_only_where_its_model_ignores_it():
    """The duplicate check compares what an ingredient's key holds: `eval_every` counts under early stopping, and a
    one-value `lora.r` beside `method: [full, lora]` gives the full ingredient its one copy."""
    stopping = config.load(ROOT / "missing.yaml", ["train.seeds=[0]", "train.early_stopping_patience=2",
                                                   "train.sweep={eval_every: [5, 10]}"])
    assert [i.train.eval_every for i in stopping.train.ingredients()] == [5, 10, 5, 10]
    mixed = config.load(ROOT / "missing.yaml", ["train.learning_rates=[1e-4]", "train.seeds=[0]",
                                                "train.sweep={method: [full, lora], lora.r: [4]}"])
    assert [(i.train.method, i.train.lora.r) for i in mixed.train.ingredients()] == [("full", 4), ("lora", 4)]


def test_the_order_params_yaml_writes_the_sweep_in_orders_no_ingredient():
    """Axes (and a mapping value's keys) written in another order name and order the ingredients alike: the order
    went into the names and the sweep's order, so the soups got their ingredients in another order (DARE's masks,
    greedy's ties) and the report other names, from the same params."""
    def names(sweep):
        return [i.name for i in config.load(ROOT / "missing.yaml", [
            "train.learning_rates=[1e-4]", "train.seeds=[0]", "train.method=lora",
            f"train.sweep={sweep}"]).train.ingredients()]
    assert names("{epochs: [2, 3], lora: [{r: 4, alpha: 8}], weight_decay: [0.0, 0.1]}") == \
        names("{weight_decay: [0.0, 0.1], lora: [{alpha: 8, r: 4}], epochs: [2, 3]}") == [
        f"lr0.0001-seed0-epochs{e}-lora.alpha8-lora.r4-weight_decay{w}" for e in (2, 3) for w in (0.0, 0.1)]


def test_head_learning_rate_null_differs_from_a_value_other_than_the_body_rate():
    p = config.load(ROOT / "missing.yaml", ["train.learning_rates=[1e-4, 2e-4]", "train.seeds=[0]",
                                            "train.sweep={head_learning_rate: [null, 0.002]}"])
    assert [i.train.head_learning_rate for i in p.train.ingredients()] == [None, 2e-3, None, 2e-3]


def test_head_learning_rate_null_under_lora_is_keyed_as_the_adapters_rate():
    """`head_learning_rate: null` is the body's rate, under LoRA its adapters' (the sweep's rate x
    `lora.learning_rate_scale`): spelling that rate out trains nothing again; the sweep's own rate is another model."""
    def key(head):
        overrides = ["train.method=lora", "train.learning_rates=[1e-4]", "train.seeds=[0]",
                     "train.lora.learning_rate_scale=5", f"train.head_learning_rate={head}"]
        return config.load(ROOT / "missing.yaml", overrides).train.ingredients()[0].key_settings()

    assert key("null") == key("0.0005") != key("0.0001")


def test_select_in_use_keeps_the_sub_sections_of_the_methods_named():
    select = config.load(ROOT / "missing.yaml", ["select.method=dnc"]).select
    assert set(select.in_use()) & set(config.REGISTRY) == {"dnc"}
    assert set(select.in_use({"gotd", "kmeans"})) & set(config.REGISTRY) == {"gotd", "kmeans"}
    assert select.in_use({"gotd"})["method"] == "dnc"


def test_soup_in_use_holds_what_each_soup_reads():
    """DARE with `merge: ties` trims to `ties.top_k`: its key must change with it, though ties is not made."""
    soup = config.load(ROOT / "missing.yaml", ["soup.methods=[uniform, dare]"]).soup
    assert "ties" not in soup.in_use() and "dare" in soup.in_use() and "greedy" not in soup.in_use()
    merged = config.load(ROOT / "missing.yaml", ["soup.methods=[dare]", "soup.dare.merge=ties"]).soup
    assert merged.in_use()["ties"]["top_k"] == merged.ties.top_k


def test_a_dare_soup_merged_as_ties_is_keyed_on_top_k_alone():
    """DARE with `merge: ties` reads `ties.top_k` only: `ties.scale` (the TIES soup's own lambda) left its key, so
    `soup_key` (which keys each soup with it alone in `methods`) re-made an unchanged DARE soup."""
    def dare(*extra):
        return config.load(ROOT / "missing.yaml", ["soup.methods=[dare]", "soup.dare.merge=ties", *extra]).soup
    assert dare().in_use() == dare("soup.ties.scale=2").in_use()
    assert dare().in_use() != dare("soup.ties.top_k=50").in_use()


# `soup.in_use()` as soupline computed it before the soups became a registry (session 57): the soup settings in
# every soup's and evaluate's key, a study cell's too; a soup keyed on the same code is kept only while these stay
SOUP_SETTINGS_KEYED = {
    (): {"methods": ["uniform", "greedy", "ties", "dare"], "greedy": {"strict": True},
         "ties": {"top_k": 20.0, "scale": 1.0}, "dare": {"drop": 0.5, "merge": "linear", "scale": 1.0, "seed": 0}},
    ("soup.methods=[dare]", "soup.dare.merge=ties", "soup.ties.top_k=40", "soup.ties.scale=2"):
        {"methods": ["dare"], "dare": {"drop": 0.5, "merge": "ties", "scale": 1.0, "seed": 0}, "ties": {"top_k": 40.0}},
    ("soup.methods=[ties, dare]", "soup.dare.merge=ties"):
        {"methods": ["ties", "dare"], "ties": {"top_k": 20.0, "scale": 1.0},
         "dare": {"drop": 0.5, "merge": "ties", "scale": 1.0, "seed": 0}},
    ("soup.methods=[uniform]", "soup.greedy.strict=false"): {"methods": ["uniform"]},
    ("soup.methods=[learned, greedy]", "soup.learned.per_tensor=true", "soup.keep_replaced=2"):
        {"methods": ["learned", "greedy"], "greedy": {"strict": True},
         "learned": {"epochs": 5, "lr": 0.05, "per_tensor": True, "seed": 0, "batch_size": 64}},
    ("soup.methods=[]",): {"methods": []},
}


@pytest.mark.parametrize("overrides", SOUP_SETTINGS_KEYED)
def test_the_soup_settings_keyed_are_those_keyed_before_the_soup_registry(overrides):
    """The soups' registry (`soupline.soup_methods`) keys each soup on what the closed list and its if/elif keyed:
    the same sub-sections, of the same soups, in the same values."""
    assert config.load(ROOT / "missing.yaml", list(overrides)).soup.in_use() == SOUP_SETTINGS_KEYED[overrides]


def test_a_dict_sweep_value_sets_keys_inside_its_section():
    """`lora: [{r: 4, alpha: 8}, ...]` changes those keys only (target_modules stays the section's) and is
    named like the dotted axes; the params' own sweep values are not modified."""
    p = config.load(ROOT / "missing.yaml", ["train.learning_rates=[1e-4]", "train.seeds=[0]", "train.method=lora",
                                            "train.lora.target_modules=[query, key]",
                                            "train.sweep={lora: [{r: 4, alpha: 8}, {r: 8}], lora.dropout: [0.0, 0.1]}"])
    ings = p.train.ingredients()
    assert [i.name for i in ings] == ["lr0.0001-seed0-lora.alpha8-lora.r4-lora.dropout0.0",
                                      "lr0.0001-seed0-lora.alpha8-lora.r4-lora.dropout0.1",
                                      "lr0.0001-seed0-lora.r8-lora.dropout0.0",
                                      "lr0.0001-seed0-lora.r8-lora.dropout0.1"]
    assert [(i.train.lora.r, i.train.lora.alpha, i.train.lora.dropout) for i in ings] == [
        (4, 8.0, 0.0), (4, 8.0, 0.1), (8, 16.0, 0.0), (8, 16.0, 0.1)]
    assert all(i.train.lora.target_modules == ["key", "query"] for i in ings)
    assert p.train.sweep["lora"] == [{"r": 4, "alpha": 8}, {"r": 8}]


@pytest.mark.parametrize("sweep, message", [
    ("{epoch: [2]}", "sweep axis 'epoch' is not a train key (did you mean 'epochs'?)"),
    ("{lora.r: [0]}", "sweep point {'lora.r': 0}: lora.r: Input should be greater than or equal to 1"),
    ("{head_init: [probe]}", "'head_init' cannot be a sweep axis: ingredients must share their initialisation"),
    ("{early_stopping_metric: [accuracy, macro_f1]}", "'early_stopping_metric' cannot be a sweep axis with "
                                                      "head_init: probe: it picks the C of LP-FT's probe head"),
    ("{pooling: [mean, cls]}", "'pooling' cannot be a sweep axis: ingredients must share one architecture"),
    ("{seeds: [[1]]}", "'seeds' cannot be a sweep axis: list seeds in train.seeds"),
    ("{max_length: [16, 32]}", "'max_length' cannot be a sweep axis: soup and evaluate read every model at the one"),
    ("{epochs: []}", "sweep axis 'epochs' lists no values"),
    ("{lora.rank: [2]}", "sweep axis 'lora.rank' is not a train key (lora's keys: r, alpha, dropout, "
                         "target_modules, learning_rate_scale)"),
    ("{lora.R: [2]}", "sweep axis 'lora.R' is not a train key (did you mean 'lora.r'?)"),
    ("{lora.r.x: [2]}", "sweep axis 'lora.r.x' is not a train key"),
    ("{train.epochs: [2]}", "sweep axis 'train.epochs' is not a train key (sweep axes are keys inside train: "
                            "'epochs')"),
    ("{lora: [{rank: 2}]}", "sweep axis 'lora': the value {'rank': 2} sets 'lora.rank', which is not a train key "
                            "(lora's keys: r, alpha, dropout, target_modules, learning_rate_scale)"),
    ("{lora: [{r: 2, alpha: 0}]}", "sweep point {'lora': {'alpha': 0, 'r': 2}}: lora.alpha: Input should be greater "
                                   "than 0 (got 0)"),
    ("{early_stopping_patience: [0, 2]}", "sweep point {'early_stopping_patience': 0}: early_stopping_patience: Input "
                                          "should be greater than or equal to 1 (got 0)"),
    ("{lora: [{r:4}, {r:8}]}", "lora.r:4: Extra inputs are not permitted; YAML needs a space after ':' (r: 4)"),
    ("{epochs: [2, 2]}", "two sweep points share the ingredient name 'lr0.0001-seed0-epochs2'"),
    ("{epochs: [2, 2.0]}", "sweep points 'lr0.0001-seed0-epochs2' and 'lr0.0001-seed0-epochs2.0' train the same "
                           "model: epochs: 2 and 2.0 give the same setting; list each value once"),
    ("{lora: [{}, {r: 8}], method: [lora]}", "sweep points 'lr0.0001-seed0-lora__-methodlora' and "
                                             "'lr0.0001-seed0-lora.r8-methodlora' train the same model"),
    ("{lora.r: [4, 8]}", "sweep axis 'lora.r' has no effect with method: full; set train.method: lora or drop the axis"),
    ("{lora: [{r: 4}], method: [full]}", "sweep axis 'lora' has no effect with method: full"),
    ("{method: [full, lora], lora.r: [4, 8]}", "sweep points 'lr0.0001-seed0-lora.r4-methodfull' and "
                                               "'lr0.0001-seed0-lora.r8-methodfull' train the same model: lora.r has "
                                               "no effect with method: full; drop lora.r from train.sweep, or change"),
    ("{eval_every: [5, 10]}", "sweep points 'lr0.0001-seed0-eval_every5' and 'lr0.0001-seed0-eval_every10' train the "
                              "same model: eval_every has no effect without early stopping"),
    ("{head_learning_rate: [null, 0.0001]}", "sweep points 'lr0.0001-seed0-head_learning_rateNone' and "
                                             "'lr0.0001-seed0-head_learning_rate0.0001' train the same model: "
                                             "head_learning_rate: null and 0.0001 give the same setting (null: the "
                                             "body's learning rate); drop null or the value equal to a "
                                             "train.learning_rates entry from the head_learning_rate axis"),
    ("{lora: {r: [4, 8]}}", "axis 'lora' is a mapping; write each setting as its own dotted axis: {lora.r: [4, 8]}"),
])
def test_bad_train_sweep_is_one_line(sweep, message):
    with pytest.raises(SouplineError) as err:
        config.load(ROOT / "missing.yaml", [f"train.sweep={sweep}"])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_unknown_sweep_axis_and_setting_is_named_in_the_one_line():
    """The first unknown axis or setting stopped the check, so `lora: [{alpah: 8, dropot: 0.1}]` named 'lora.alpah'
    alone and the next run 'lora.dropot': every one is named, each with its guess, a sub-section's keys once (one
    reads as before: `test_bad_train_sweep_is_one_line`)."""
    lora = ", ".join(config.LoraParams.model_fields)
    with pytest.raises(SouplineError) as err:
        config.load(ROOT / "missing.yaml", ["train.sweep={lora: [{alpah: 8, dropot: 0.1}]}"])
    assert str(err.value) == ("params: train: sweep axis 'lora': the value {'alpah': 8, 'dropot': 0.1} sets "
                              "'lora.alpah' (did you mean 'lora.alpha'?) and 'lora.dropot' (did you mean "
                              "'lora.dropout'?), which are not train keys")
    with pytest.raises(SouplineError) as err:
        config.load(ROOT / "missing.yaml", ["train.sweep={epoch: [2], lora.rank: [4], lora.bar: [1], "
                                            "lora: [{r: 4}, {rank: 8, foo: 1}], train.seeds: [1]}"])
    assert str(err.value) == (
        "params: train: sweep axes 'epoch' (did you mean 'epochs'?), 'lora.bar', 'lora.rank' and 'train.seeds' "
        f"(sweep axes are keys inside train: 'seeds') are not train keys (lora's keys: {lora}); sweep axis 'lora': "
        "the value {'foo': 1, 'rank': 8} sets 'lora.foo' and 'lora.rank', which are not train keys")


def test_study_budgets_1_and_1_0_are_two_cells():
    assert config.load(ROOT / "missing.yaml", ["study.budgets=[1, 1.0]"]).study.budgets == [1, 1.0]


def test_source_paths_are_what_prepare_reads():
    assert config.PrepareParams(source="bbcnews").source_paths() == []
    assert config.PrepareParams(source="data/raw/a.csv").source_paths() == ["data/raw/a.csv"]
    splits = {"pool": "p.csv", "validation": "v.csv", "test": "t.csv"}
    assert config.PrepareParams(source="bbcnews", splits=splits).source_paths() == ["p.csv", "v.csv", "t.csv"]


def test_a_single_learning_rate_or_seed_is_a_sweep_of_one_and_budget_1_warns():
    p = config.load(ROOT / "missing.yaml", ["train.learning_rates=0.001", "train.seeds=3"])
    assert (p.train.learning_rates, p.train.seeds) == ([0.001], [3])
    with pytest.warns(UserWarning, match=r"select.budget=1 is a count: one example \(the whole pool is 1.0\)"):
        assert config.load(ROOT / "missing.yaml", ["select.budget=1"]).select.budget == 1
    with pytest.raises(SouplineError, match="learning rates must be > 0"):
        config.load(ROOT / "missing.yaml", ["train.learning_rates=-0.1"])


@pytest.mark.parametrize("overrides", [["soup.ties.top_k=0.2"],
                                       ["soup.ties.top_k=0.2", "soup.methods=[dare]", "soup.dare.merge=ties"]])
def test_a_ties_top_k_of_1_or_below_warns_that_it_is_a_percent_not_mergekits_density(overrides, recwarn):
    """0.2 written as mergekit's density (20 % kept) kept 0.2 %, silently; only a soup that reads top_k warns."""
    with pytest.warns(UserWarning, match=r"soup.ties.top_k=0.2 is a percent: TIES keeps 0.2 % of each task vector; "
                                         r"for mergekit's density 0.2 \(a fraction\), write soup.ties.top_k=20"):
        assert config.load(ROOT / "missing.yaml", overrides).soup.ties.top_k == 0.2
    recwarn.clear()
    config.load(ROOT / "missing.yaml", ["soup.ties.top_k=0.2", "soup.methods=[uniform,dare]"])  # linear DARE
    config.load(ROOT / "missing.yaml", ["soup.ties.top_k=1.5"])
    assert not [w for w in recwarn if "top_k" in str(w.message)]


def test_pick_device_checks_the_cuda_ordinal(monkeypatch):
    """cuda:N beyond the machine's GPUs is one line at the start, not 'invalid device ordinal' at the first
    .to(device); CUDA is faked (these tests run on CPU)."""
    import torch

    from soupline.models import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [pick_device(d) for d in ("auto", "cuda", "cuda:0", "cuda:1", "cpu")] == ["cuda", "cuda", "cuda:0",
                                                                                      "cuda:1", "cpu"]
    with pytest.raises(SouplineError, match=r"^device 'cuda:2' asked for but this machine has 2 CUDA devices "
                                            r"\(cuda:0 to cuda:1\); use one of them, cuda or auto$"):
        pick_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == "cpu"
    with pytest.raises(SouplineError, match="CUDA is not available"):
        pick_device("cuda:0")


def test_several_overrides_in_one_argument_are_one_line_naming_the_second():
    # the README's `O='prepare.max_examples=800 train.seeds=[0,1] ...'; soupline run $O` in zsh, which does not split
    # an unquoted $O: the whole string came as one override, refused as "max_examples: Input should be a valid integer"
    glued = "prepare.max_examples=800 train.seeds=[0,1] train.min_steps=10"
    with pytest.raises(SouplineError, match=r"holds more than one override, .* before 'train\.seeds=': pass each"):
        config.load(ROOT / "params.yaml", [glued])
    ok = config.load(ROOT / "params.yaml", ["prepare.splits={pool: a b.csv}", "select.dnc.q=column:rating"])
    assert ok.prepare.splits.pool == "a b.csv"


def test_params_are_read_as_yaml_1_2_as_dvc_writes_them(tmp_path):
    """`dvc exp run -S 'prepare.label_names=[no,yes]'` writes `- no` unquoted (text in YAML 1.2, which DVC writes):
    PyYAML's YAML 1.1 read False, and no spelling of the -S could give the names. `010` was octal 8, `1.5e3` text."""
    f = tmp_path / "params.yaml"
    f.write_text("seed: 010\nprepare:\n  label_names:\n  - no\n  - yes\nselect:\n  gotd:\n    max_pool_for_ot: 2.5e4\n")
    p = config.load(f)
    assert p.prepare.label_names == ["no", "yes"] and p.seed == 10 and p.select.gotd.max_pool_for_ot == 25000
    with pytest.raises(SouplineError) as err:  # 1500.0: not "the text '1.5e3' (quoted in YAML)"
        config.load(f, ["select.budget=1.5e3"])
    assert "a fractional budget must be in (0, 1]" in str(err.value)
    assert config.load(f, ["soup.greedy.strict=no"]).soup.greedy.strict is False  # a boolean setting still takes no


@pytest.mark.parametrize("override", ["prepare.source=''", "prepare.splits={pool: ''}", "select.gotd.target=''",
                                      "prepare.keep_columns=[rating, '']", "model=''"])
def test_an_empty_name_is_one_line(tmp_path, override):
    """`prepare.source: ''` read the path '', the working directory (the project root), as a data folder."""
    with pytest.raises(SouplineError, match=r"is empty; give a value"):
        config.load(tmp_path / "missing.yaml", [override])


@pytest.mark.parametrize("override, expected", [
    ("select.dnc.q=column:", "(YAML read 'column:' as a key with no value; give what follows ':' with no space: "
                             "column:<name>)"),  # was: write column:None
    ("soup.methods=uniform", "soup.methods: Input should be a valid list (got 'uniform'; write a list: [uniform])"),
    ("train.sweep={lr: [0.001]}", "sweep axis 'lr' is not a train key ('learning_rates'? it cannot be a sweep axis: "
                                  "list learning rates in train.learning_rates)"),  # was: did you mean 'lora'?
    ("select.dnc.K=3", "unknown key 'select.dnc.K' (did you mean 'select.dnc.k'?)"),  # was: valid keys: [...]
    ("TRAIN.epochs=3", "unknown key 'TRAIN' (did you mean 'train'?)"),
])
def test_the_fix_a_message_gives_is_one_that_works(tmp_path, override, expected):
    with pytest.raises(SouplineError) as err:
        config.load(tmp_path / "missing.yaml", [override])
    assert expected in str(err.value)


def test_a_section_left_empty_says_so(tmp_path):
    """A section whose keys are all commented out is null in YAML: it said "Input should be a valid dictionary or
    instance of PrepareParams (got None)"."""
    f = tmp_path / "params.yaml"
    f.write_text("prepare:\n#  source: bbcnews\n")
    with pytest.raises(SouplineError) as err:
        config.load(f)
    assert str(err.value) == ("params: prepare: must be a section: a mapping of its keys, or {} for its defaults "
                              "(every key under it is commented out or missing: YAML reads it as null)")
    assert config.load(f, ["prepare={}"]).prepare.source == "bbcnews"  # the fix it gives


def test_soupline_params_output_reads_back_as_the_same_values(tmp_path):
    """`soupline params > p.yaml`: PyYAML's safe_dump quotes by YAML 1.1, so '1.5e3' and '0o10' were written bare
    and read back (YAML 1.2) as the numbers 1500.0 and 8."""
    import yaml

    from soupline.config import dump, load

    names = ["1.5e3", "0o10", "1e3", "010", "no", "on", "true"]
    text = dump(load(tmp_path / "none.yaml", [f"prepare.label_names={names}"]).model_dump())
    (tmp_path / "p.yaml").write_text(text)
    assert load(tmp_path / "p.yaml").prepare.label_names == names
    assert yaml.safe_load(text)["prepare"]["label_names"] == names  # a YAML 1.1 reader too


def test_dnc_finetune_scorer_with_a_probe_train_method_is_refused_before_any_work():
    """The select stage said so only after clustering and a first round of dnc."""
    bad = ["select.dnc.scorer=finetune", "train.method=probe"]
    with pytest.raises(SouplineError, match="select.method is dnc and select.dnc.scorer=finetune fine-tunes the "
                                            "train stage's model"):
        config.validate(config.apply_overrides({}, ["select.method=dnc", *bad]))
    with pytest.raises(SouplineError, match="study.methods lists dnc and select.dnc.scorer=finetune"):
        config.validate(config.apply_overrides({}, ["study.methods=[random, dnc]", *bad]))
    config.validate(config.apply_overrides({}, ["select.method=random", *bad]))  # dnc does not run


def test_a_mapping_override_merges_into_its_section_as_dvc_exp_run_s_does(tmp_path):
    """`dvc exp run -S 'train.lora={r: 4}'` (Hydra) keeps lora's other keys; `soupline run` with the same override
    replaced the section, so alpha and target_modules went back to their defaults: another model than DVC's."""
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  lora: {r: 8, alpha: 32.0, target_modules: [query, key, value]}\n"
                 "  sweep: {epochs: [3, 6]}\n")
    lora = config.load(f, ["train.lora={r: 4}"]).train.lora
    assert (lora.r, lora.alpha, lora.target_modules) == (4, 32.0, ["key", "query", "value"])
    assert config.load(f, ["++train.sweep={min_steps: [0]}"]).train.sweep == {"epochs": [3, 6], "min_steps": [0]}
    assert config.load(f, ["~train.sweep.epochs"]).train.sweep == {}
    assert config.load(f, ["train.sweep={}"]).train.sweep == {}  # {} empties (DVC's -S: a no-op)
    assert config.load(f, ["train.lora.target_modules=[value]"]).train.lora.target_modules == ["value"]  # lists replace


def test_a_study_budget_of_one_warns_under_its_own_key():
    """`study.budgets: [1, 0.1]` warned about `select.budget=1`, a key the user had not set."""
    with pytest.warns(UserWarning, match=r"^study.budgets=1 is a count"):
        config.validate(config.apply_overrides({}, ["study.budgets=[1, 0.1]"]))


def test_dvc_exp_run_set_param_can_empty_every_collection_of_params_yaml(tmp_path):
    """`dvc exp run -S` rewrites params.yaml with ruamel's round-trip writer, which wrote a block list or mapping that
    became empty (`[]`, `{}`) below its key's end-of-line comment, at column 0: the README's own way to drop a sweep
    axis (`-S '++train.sweep={epochs: [3, 6]}'`, then `-S '~train.sweep.epochs'`), or `prepare.keep_columns` set and
    then emptied, left DVC failing on its own write (`YAML file structure is corrupted`). Each such key of the shipped
    params.yaml is set and emptied again through DVC's own `-S` code."""
    from dvc.utils.hydra import apply_overrides
    from dvc.utils.serialize import YAMLFileCorruptedError

    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())

    def collections(tree: dict, prefix: str = ""):
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                yield from collections(value, f"{prefix}{key}.")
            elif isinstance(value, (list, dict)):
                yield prefix + key, value

    keys = dict(collections(shipped))
    assert {"prepare.keep_columns", "train.sweep", "soup.methods"} <= set(keys)
    broken = []
    for key, value in keys.items():
        path = tmp_path / "params.yaml"
        path.write_text((ROOT / "params.yaml").read_text())
        steps = ([f"++{key}={{epochs: [3, 6]}}"], [f"~{key}.epochs"]) if isinstance(value, dict) \
            else ([f"{key}=[a, b]"], [f"{key}=[]"])
        try:
            for overrides in steps:
                apply_overrides(path, overrides)
                written = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, YAMLFileCorruptedError) as err:  # ours reading the write, or DVC's at the next -S
            broken.append(f"{key}: {type(err).__name__}")
            continue
        section, _, name = key.rpartition(".")
        node = written
        for part in filter(None, section.split(".")):
            node = node[part]
        assert node[name] == type(value)(), (key, node[name])
    assert not broken, broken
