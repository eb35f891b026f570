"""The one writer of bench/README.md's generated blocks: ``<!-- name:begin -->`` … ``<!-- name:end -->``."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"


def replace_block(name: str, body: str, heading: str | None = None, readme: Path = README) -> None:
    """Put ``body`` between the ``name`` markers, leaving the rest of the file (other benchmarks' blocks) alone.

    A block not yet in the file is appended, after ``heading`` when given.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else "# Benchmarks\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + (f"{heading}\n\n" if heading else "") + block + "\n"
    readme.write_text(text, encoding="utf-8")
