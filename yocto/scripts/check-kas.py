"""Check yocto/kas/*.yml offline (run with the venv that has kas, PyYAML and jsonschema).

Each kas file, and every file it includes, must validate against the schema kas itself ships
(kas/schema-kas.json), and after the includes are merged every repository with a URL must be
pinned to a full commit id and a machine must be set. kas would clone the layers, which needs
the network: running it is for a build host.
"""

import json
import re
import sys
from importlib.resources import files
from pathlib import Path

import jsonschema
import yaml

COMMIT = re.compile(r"^[0-9a-f]{40}$")
REPO_ROOT = Path(__file__).resolve().parents[2]


def load(path: Path, schema: dict, seen: list[Path]) -> dict:
    """The file's settings merged over its includes' (later wins, as in kas)."""
    if path in seen:
        raise ValueError(f"include loop: {' -> '.join(map(str, seen + [path]))}")
    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, schema)
    merged: dict = {}
    for include in config.get("header", {}).get("includes", []):
        if not isinstance(include, str):
            raise ValueError(f"{path}: includes from other repositories are not used here")
        # kas resolves an include relative to the root of the repository holding the file.
        merged = merge(merged, load(REPO_ROOT / include, schema, seen + [path]))
    return merge(merged, config)


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def problems_of(path: Path, schema: dict) -> list[str]:
    try:
        config = load(path.resolve(), schema, [])
    except (OSError, ValueError, yaml.YAMLError, jsonschema.ValidationError) as e:
        return [f"{path}: {str(e).splitlines()[0]}"]
    problems = []
    for name, repo in sorted(config.get("repos", {}).items()):
        if repo and repo.get("url") and not COMMIT.match(str(repo.get("commit", ""))):
            problems.append(f"{path}: repository {name!r} is not pinned to a full commit id")
    if not config.get("machine"):
        problems.append(f"{path}: no machine")
    return problems


def main(paths: list[str]) -> int:
    schema = json.loads(files("kas").joinpath("schema-kas.json").read_text())
    problems = [p for path in paths for p in problems_of(Path(path), schema)]
    for problem in problems:
        print(f"check-kas: {problem}", file=sys.stderr)
    if not problems:
        print(f"check-kas: {len(paths)} kas files valid against kas's schema, every layer pinned to a commit")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
