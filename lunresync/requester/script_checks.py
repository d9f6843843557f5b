"""The checks of a script command's arguments, by its row of the command table: how many,
not empty, each value (by the row's check), and the options of ``resync`` and ``swap``.

A refused command raises :class:`Refused` with the reason alone; the parser
(:func:`lunresync.requester.script.parse_script`) adds the file and the line.
"""

from __future__ import annotations

from .script_grammar import CommandSpec, Refused, fold


def check_args(spec: CommandSpec, args: list[str]) -> tuple[str, ...]:
    """``args`` (the words after the command's own) checked against ``spec``: positional
    arguments in their normal form, then the options lower-cased."""
    verb = spec.verb.value
    if spec.options:
        assert spec.max_args is not None
        positional, options = args[: spec.max_args], args[spec.max_args :]
        if len(positional) < spec.min_args:
            raise Refused(_count_message(spec, len(args)))
        for word in positional:
            if spec.option_spec(fold(word).partition("=")[0]) is not None:
                raise Refused(
                    f"{verb!r} needs {spec.arguments.split()[0]} before its options,"
                    f" got option {word!r}"
                )
    else:
        positional, options = args, []
        if len(args) < spec.min_args or (spec.max_args is not None and len(args) > spec.max_args):
            raise Refused(_count_message(spec, len(args)))
    if not spec.allow_empty:
        for index, word in enumerate(positional, 1):
            if not word:
                raise Refused(f"argument {index} of {verb!r} is empty")
    if spec.check is not None:
        positional = [spec.check(word) for word in positional]
    return (*positional, *_check_options(spec, options))


def _count_message(spec: CommandSpec, got: int) -> str:
    low, high = spec.min_args, spec.max_args
    if spec.options or high is None:
        wanted = f"at least {low} argument{'s' if low != 1 else ''}"
    elif low == high == 0:
        return f"{spec.verb.value!r} takes no arguments, got {got}"
    elif low == high:
        wanted = f"{low} argument{'s' if low != 1 else ''}"
    elif low == 0:
        wanted = f"at most {high} argument{'s' if high != 1 else ''}"
    else:
        wanted = f"{low} or {high} arguments" if high == low + 1 else f"{low} to {high} arguments"
    return f"{spec.verb.value!r} takes {wanted} ({spec.arguments}), got {got}"


def _check_options(spec: CommandSpec, words: list[str]) -> list[str]:
    verb = spec.verb.value
    folded: list[str] = []
    seen: set[str] = set()
    for word in words:
        option = fold(word)
        name, equals, value = option.partition("=")
        option_spec = spec.option_spec(name)
        if option_spec is None:
            expected = ", ".join(each.usage for each in spec.options)
            raise Refused(f"unknown {verb!r} option {word!r}; expected one of: {expected}")
        if option_spec.values and not equals:
            raise Refused(f"{verb!r} option {name!r} needs a value: {option_spec.usage}")
        if not option_spec.values and equals:
            raise Refused(f"{verb!r} option {name!r} takes no value, got {word!r}")
        if option_spec.values and value not in option_spec.values:
            raise Refused(
                f"{verb!r} option {name!r} expects one of {', '.join(option_spec.values)},"
                f" got {word.partition('=')[2]!r}"
            )
        if name in seen:
            raise Refused(f"{verb!r} option {name!r} is given more than once")
        seen.add(name)
        folded.append(option)
    for first, second in spec.exclusive:
        if first in seen and second in seen:
            raise Refused(f"{verb!r} options {first!r} and {second!r} exclude each other")
    return folded
