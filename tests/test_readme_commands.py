"""README commands keep working as written: every `soupline ...` and `python -m flows.*` command the README shows
(code blocks and inline code, the Measured table's included) gets its KEY=VALUE overrides accepted by the shipped
params.yaml. A command whose overrides no longer validate (a key renamed, a combination refused since) fails here
rather than for the reader who copies it."""

import re
import shlex

import pytest

from soupline import config
from tests.conftest import ROOT

DRIVERS = re.compile(r"^(soupline|python -m flows\.(pipeline|study))(?=\s|$)")
OVERRIDE = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z0-9_.]*=")  # dotted: not the `key=value` placeholder


def readme_commands() -> list[str]:
    """The README's command lines: inline code spans and code-block lines, each cut at its `#` comment."""
    text = (ROOT / "README.md").read_text()
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
