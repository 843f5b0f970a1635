"""Helper for command-parser tests: feed an utterance word by word."""

from __future__ import annotations

from edge_stream.voice.command_parser import words_of


def parse(parser, text: str) -> tuple[list[list[str]], str]:
    """Fields after each word, and the final command."""
    emitted = [parser.push_word(w) for w in words_of(text)]
    return emitted, parser.end()
