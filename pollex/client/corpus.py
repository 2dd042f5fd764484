"""The texts `pollex bench` sends: the built-in samples and the user's own (`--file`).

The built-ins (`pollex/client/samples/*.txt`, named after their file) were written for
pollex: work writing from about 100 to 2,000 characters, with the mistakes people make
when English is their second language (articles, tenses, prepositions, word order, false
friends, run-on sentences). They come sorted by length, shortest first.

A `--file` ending in `.jsonl` or `.ndjson` holds one JSON object per line,
`{"name"?: str, "text": str}` (blank lines are skipped); any other file holds one text per
block of lines, blocks separated by blank lines. A text without a name is called after
the file and its place in it: `notes-1`, `notes-2`, ...
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

JSONL_SUFFIXES = (".jsonl", ".ndjson")


class CorpusError(ValueError):
    """A file that cannot be used, or a selection that matches nothing; says which and why."""


@dataclass(frozen=True)
class Sample:
    name: str
    text: str
    source: str  # "built-in", or the file it came from


def builtin() -> list[Sample]:
    from importlib import resources

    folder = resources.files("pollex.client") / "samples"
    samples = [
        Sample(entry.name.removesuffix(".txt"), entry.read_text("utf-8").strip(), "built-in")
        for entry in folder.iterdir()
        if entry.name.endswith(".txt")
    ]
    return sorted(samples, key=lambda s: len(s.text))


def load_file(path: str) -> list[Sample]:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror}") from None
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CorpusError(f"{path} is not UTF-8 text") from None
    stem = Path(path).stem
    if path.lower().endswith(JSONL_SUFFIXES):
        samples = _jsonl(content, path, stem)
        how = 'one {"text": ...} object per line'
    else:
        samples = [Sample(f"{stem}-{n}", text, path) for n, text in enumerate(_blocks(content), 1)]
        how = "one text per block of lines, blocks separated by a blank line"
    if not samples:
        raise CorpusError(f"{path} holds no text ({how})")
    return samples


def _blocks(content: str) -> list[str]:
    blocks: list[str] = []
    lines: list[str] = []
    for line in [*content.splitlines(), ""]:
        if line.strip():
            lines.append(line.rstrip())
        elif lines:
            blocks.append("\n".join(lines))
            lines = []
    return blocks


def _jsonl(content: str, path: str, stem: str) -> list[Sample]:
    samples: list[Sample] = []
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            item = json.loads(line)
        except ValueError:
            raise CorpusError(f"{where}: not JSON") from None
        if not isinstance(item, dict):
            raise CorpusError(f'{where}: not a JSON object like {{"text": "..."}}')
        text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            raise CorpusError(f'{where}: "text" must be a non-empty string')
        name = item.get("name", f"{stem}-{len(samples) + 1}")
        if not isinstance(name, str) or not name.strip():
            raise CorpusError(f'{where}: "name" must be a non-empty string')
        samples.append(Sample(name.strip(), text, path))
    return samples


def gather(files: Iterable[str]) -> list[Sample]:
    """The built-ins, then each file's texts in order; names must be unique."""
    samples = builtin()
    for path in files:
        samples += load_file(path)
    seen: dict[str, Sample] = {}
    for sample in samples:
        if sample.name in seen:
            first = seen[sample.name].source
            raise CorpusError(
                f"two samples are named {sample.name!r} ({first} and {sample.source}): rename one"
            )
        seen[sample.name] = sample
    return samples


def select(samples: Sequence[Sample], patterns: Sequence[str]) -> list[Sample]:
    """The samples whose names match any of `patterns` (names or shell-style wildcards),
    in their own order; every pattern must match something."""
    if not patterns:
        return list(samples)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(s.name, pattern) for s in samples):
            known = ", ".join(s.name for s in samples)
            raise CorpusError(f"no sample matches {pattern!r} (there are: {known})")
    return [s for s in samples if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]
