"""README commands keep working as written: every `soupline ...` and `python -m flows.*` command the README shows
(code blocks and inline code, the Measured table's included), and the docs/ files that hold its shortened sections
in full (measured, guarantees, parameters, recipes, soups, sweeps, study, outputs, own data, Prefect), gets its
KEY=VALUE overrides accepted by the shipped params.yaml. A command whose overrides no longer validate (a key
renamed, a combination refused since) fails here rather than for the reader who copies it. And the README's short
sections stay the headlines of the docs' full ones: row for row, promise for promise, setting for setting, command
for command."""

import re
import shlex

import pytest

from soupline import config
from tests.conftest import ROOT

# the README and the sections it keeps in full in docs/
READMES = ["README.md", "docs/measured.md", "docs/guarantees.md", "docs/parameters.md", "docs/recipes.md",
           "docs/soups.md", "docs/sweeps.md", "docs/study.md", "docs/outputs.md", "docs/own_data.md", "docs/prefect.md"]
DRIVERS = re.compile(r"^(soupline|python -m flows\.(pipeline|study))(?=\s|$)")
OVERRIDE = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z0-9_.]*=")  # dotted: not the `key=value` placeholder


def readme_commands() -> list[str]:
    """The README's (and its docs/ sections') command lines: inline code spans and code-block lines, each cut at its
    `#` comment."""
    text = "\n".join((ROOT / name).read_text() for name in READMES)
    spans = re.findall(r"`([^`\n]+)`", text)
    blocks = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]
    commands = []
    for candidate in spans + blocks:
        for part in re.split(r"\s*(?:&&|\|\||;)\s*", candidate.split("  #")[0].strip()):
            if DRIVERS.match(part) and "$" not in part:  # `soupline run $O` reads a shell variable
                commands.append(part)
    return sorted(set(commands))


def test_the_readme_shows_driver_commands():
    commands = readme_commands()
    assert any(c.startswith("soupline study ") for c in commands)
    assert any(c.startswith("python -m flows.pipeline ") for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_each_readme_command_s_overrides_validate(command):
    overrides = [word for word in shlex.split(command) if OVERRIDE.match(word)]
    config.load(ROOT / "params.yaml", overrides)  # a SouplineError names the key and why


def section(text: str, heading: str) -> str:
    """A `## ` section's text, up to the next `## ` heading."""
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def measured_rows(name: str) -> list[tuple[str, str]]:
    """Each Measured table row's first cell and command (the first code span of its second cell)."""
    rows = [line.split(" | ") for line in section((ROOT / name).read_text(), "## Measured").splitlines()
            if line.startswith("| ") and not line.startswith("| what | command |")]
    return [(cells[0], re.search(r"`[^`]+`", cells[1]).group(0)) for cells in rows]


def test_the_readme_s_measured_rows_are_the_full_rows_headlines():
    """One README row per docs/measured.md row, in its order, with the full row's command byte for byte (a row added
    to one table and not the other, or a command edited in one, fails here) and a link to the full row."""
    readme, full = measured_rows("README.md"), measured_rows("docs/measured.md")
    assert len(readme) == len(full) > 50
    assert [command for _, command in readme] == [command for _, command in full]
    table = section((ROOT / "README.md").read_text(), "## Measured")
    assert all(line.endswith("[full row](docs/measured.md) |") for line in table.splitlines() if line.startswith("| ")
               and not line.startswith(("| what | command |", "|---")))


def test_the_readme_s_guarantees_are_the_full_ones_in_a_line():
    """The README's Guarantees name the same promises, in the same order, as docs/guarantees.md holds in full."""
    def promises(name: str) -> list[str]:
        return re.findall(r"^- \*\*(.+?)\*\*", section((ROOT / name).read_text(), "## Guarantees"), re.M)

    assert promises("README.md") == promises("docs/guarantees.md")
    assert len(promises("README.md")) >= 5


def params_rows(name: str) -> tuple[list[list[str]], list[list[str]]]:
    """The Parameters section's two tables, each row as its cells: the settings table's, then the selection methods'."""
    text = section((ROOT / name).read_text(), "## Parameters (`params.yaml`)")
    settings, methods = text.split("\n| `select.method` | what it does | settings |\n")
    return tuple([[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines()
                  if line.startswith("| `")] for table in (settings, methods))


def test_the_readme_s_params_rows_are_the_full_rows_in_short():
    """One README row per docs/parameters.md row, in its order, with the same key and default cells (a setting added
    to one table and not the other, or a default edited in one, fails here; test_config checks the README's defaults
    against the code's), and the same methods; each README row ends with a link to its full row or its own docs/
    page."""
    (settings, methods), (full_settings, full_methods) = params_rows("README.md"), params_rows("docs/parameters.md")
    assert [row[:2] for row in settings] == [row[:2] for row in full_settings]
    assert [row[0] for row in methods] == [row[0] for row in full_methods] == [
        "`random`", "`kmeans`", "`dnc`", "`dealrec`", "`gotd`"]
    assert len(settings) > 50
    assert all(re.search(r"\]\(docs/[a-z0-9_]+\.md\)$", row[-1]) for row in settings + methods)


# the README sections kept short, each whole in its docs/ file
SHORT_SECTIONS = {"## Fine-tuning recipes": "docs/recipes.md", "## Soups": "docs/soups.md",
                  "## Ingredient sweeps": "docs/sweeps.md",
                  "## Study: selection methods x budgets x soups": "docs/study.md", "## Outputs": "docs/outputs.md",
                  "## Use your own data": "docs/own_data.md", "## Prefect": "docs/prefect.md"}


def shown_commands(text: str) -> set[str]:
    """The commands a text shows: its code-block lines and its inline code that starts with a command."""
    blocks = [line.split("  #")[0].strip() for block in re.findall(r"```\w*\n(.*?)```", text, re.S)
              for line in block.splitlines()]
    spans = re.findall(r"`((?:soupline|dvc|python) [^`\n]+)`", text)
    return {command for command in blocks + spans if command}


@pytest.mark.parametrize("heading", SHORT_SECTIONS)
def test_the_readme_s_short_sections_link_their_full_ones_and_show_no_command_they_lack(heading):
    """Each short README section links the docs/ file that holds it whole, which has the same heading and
    subsections, and every command the README section shows is in the full one, as written (a command edited in the
    README and not in docs/, or added to one alone, fails here)."""
    readme, full = (section((ROOT / name).read_text(), heading) for name in ("README.md", SHORT_SECTIONS[heading]))
    assert f"]({SHORT_SECTIONS[heading]})" in readme
    assert re.findall(r"^### .+$", readme, re.M) == re.findall(r"^### .+$", full, re.M)
    assert shown_commands(readme) and shown_commands(readme) <= shown_commands(full)
    assert len(readme) < len(full)
