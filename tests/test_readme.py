"""The README's API example runs as written."""

from __future__ import annotations

import os
import re

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_readme_api_example_runs():
    text = open(README, encoding="utf-8").read()
    section = text.split("## The API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert 0.0 < float(namespace["optax"].tree_utils.tree_get(
        namespace["opt_state"], "modification_frequency")) < 1.0
    assert namespace["losses"].shape == (4,)


def test_readme_quickstart_is_what_ci_runs():
    text = open(README, encoding="utf-8").read()
    ci = open(os.path.join(os.path.dirname(README), ".ci", "run"), encoding="utf-8").read()
    commands = re.findall(r"```bash\n(python3 -m venv .*?)\n```", text)
    assert len(commands) >= 2
    assert commands[1] in ci  # the test command
