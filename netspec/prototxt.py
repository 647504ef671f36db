"""Reading and writing Caffe text protos (net and solver ``.prototxt`` files).

Parsing goes through ``google.protobuf.text_format``, so it accepts what
Caffe's ``ReadProtoFromTextFile`` accepts; its errors are rewritten into one
line, ``file:line:col: what is wrong (hint)``, raised as ``NetspecError``.
Writing produces the layout of ``text_format`` (the same text pycaffe's
``str(net_param)`` gives) and replaces files atomically.
"""

import difflib
import os
import re
import tempfile

from google.protobuf import text_format

from netspec.errors import NetspecError, where
from netspec.proto import caffe_pb2
from netspec import upgrade

# --------------------------------------------------------------------------
# Parsing


def parse_text(text, message, path=None):
    """Parse ``text`` into the proto ``message`` (an instance) and return it.

    No upgrades are applied. ``path`` only names the source in errors.
    """
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise NetspecError(_describe_parse_error(error, text, path)) from None
    if not message.IsInitialized():
        raise NetspecError(_describe_missing_required(message, path))
    return message


def parse_net(path_or_text, *, path=None, upgrade_legacy=True):
    """Parse a net from a file path or from prototxt text.

    Legacy formats (V0, V1, ``input:`` fields, ...) are upgraded to the
    current form as Caffe does on load, unless ``upgrade_legacy`` is false.
    ``path`` names the source in errors when text is given.
    """
    text, path = _text_and_path(path_or_text, path)
    net = parse_text(text, caffe_pb2.NetParameter(), path)
    if upgrade_legacy:
        net = upgrade.upgrade_net(net, path)
    return net


def parse_solver(path_or_text, *, path=None, upgrade_legacy=True):
    """Parse a solver from a file path or from prototxt text (upgraded as in Caffe)."""
    text, path = _text_and_path(path_or_text, path)
    solver = parse_text(text, caffe_pb2.SolverParameter(), path)
    if upgrade_legacy:
        solver = upgrade.upgrade_solver(solver, path)
    return solver


def read_net(path):
    """Read a net prototxt file and upgrade it as Caffe's ``UpgradeNetAsNeeded`` does."""
    path = os.fspath(path)
    return upgrade.upgrade_net(parse_text(read_text_file(path), caffe_pb2.NetParameter(), path), path)


def read_solver(path):
    """Read a solver prototxt file and upgrade it as ``UpgradeSolverAsNeeded`` does."""
    path = os.fspath(path)
    return upgrade.upgrade_solver(parse_text(read_text_file(path), caffe_pb2.SolverParameter(), path), path)


def read_text_file(path):
    """Return the text of ``path``; a missing or binary file is a ``NetspecError``."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise NetspecError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise NetspecError(f"{path}: is a directory, expected a .prototxt file") from None
    except OSError as error:
        raise NetspecError(f"{path}: cannot read ({error.strerror})") from None
    except ValueError:      # a NUL byte in the name
        raise NetspecError(f"{path!r}: not a file name (it holds a NUL byte)") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise NetspecError(f"{path}: not a text file (a binary .caffemodel? "
                           "load it as weights instead)") from None


def _looks_like_path(value):
    """A string is a path unless it holds prototxt syntax (newline, ':' or '{')."""
    if not value.strip() or "\0" in value:    # no file name holds a NUL byte
        return False
    if os.path.isfile(value):
        return True
    return "\n" not in value and ":" not in value and "{" not in value


def _text_and_path(path_or_text, path):
    if isinstance(path_or_text, os.PathLike) or (
            isinstance(path_or_text, str) and _looks_like_path(path_or_text)):
        file_path = os.fspath(path_or_text)
        return read_text_file(file_path), path or file_path
    if not isinstance(path_or_text, str):
        raise TypeError("expected a path or prototxt text, got "
                        f"{type(path_or_text).__name__}")
    return path_or_text, path


# --------------------------------------------------------------------------
# Error messages


_PREFIX = re.compile(r"^(\d+):(\d+) : ")
_NO_FIELD = re.compile(r'^Message type "([\w.]+)" has no field named "(\w+)"')
_NO_ENUM_NAME = re.compile(r'^Enum type "([\w.]+)" has no value named (\S+?)\.?$')
_NO_ENUM_NUMBER = re.compile(r'^Enum type "([\w.]+)" has no value with number (-?\d+)\.?$')
_REPEATED = re.compile(r'^Message type "([\w.]+)" should not have multiple "(\w+)" fields')
_EXPECTED_STRING = re.compile(r"^Expected string but found: '(.*)'$")
_BAD_NUMBER = re.compile(r"^Couldn't parse (integer|float): (.*)$")
_OUT_OF_RANGE = re.compile(r"^Value out of range: (.*)$")
_EXPECTED_ID = re.compile(r"^Expected identifier or number, got (.*?)\.?$")


def _describe_parse_error(error, text, path):
    """Turn a text_format.ParseError into ``file:line:col: message``."""
    raw = str(error)
    line, column = error.GetLine(), error.GetColumn()
    match = _PREFIX.match(raw)
    if match:
        raw = raw[match.end():]
    lines = text.split("\n")
    source_line = lines[line - 1] if line and 0 < line <= len(lines) else ""
    # Protobuf repeats the offending line as "'<line>': " before the message.
    for quoted in (source_line, source_line.strip()):
        prefix = f"'{quoted}': "
        if raw.startswith(prefix):
            raw = raw[len(prefix):]
            break
    message = _human_message(raw, source_line, column, text, line)
    return f"{where(path, line, column)}: {message}"


def _short_name(full_name):
    return full_name.rsplit(".", 1)[-1]


def _did_you_mean(word, choices):
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _token_at(source_line, column):
    """The token starting at 1-based ``column`` of the line."""
    rest = source_line[max(column - 1, 0):]
    match = re.match(r'"[^"]*"|\'[^\']*\'|[^\s{}:<>,;]+|\S', rest)
    return match.group(0) if match else "end of file"


def _field_before(source_line, column):
    match = re.search(r"(\w+)\s*:?\s*$", source_line[:max(column - 1, 0)])
    return match.group(1) if match else None


def _unclosed_brace_line(text):
    """Line number of the first "{" (or "<") never closed, or None.

    Quoted strings and # comments are skipped.
    """
    open_lines = []
    for number, line in enumerate(text.split("\n"), start=1):
        quote = None
        for char in line:
            if quote:
                if char == quote:
                    quote = None
            elif char in "\"'":
                quote = char
            elif char == "#":
                break
            elif char in "{<":
                open_lines.append(number)
            elif char in "}>" and open_lines:
                open_lines.pop()
    return open_lines[0] if open_lines else None


def _human_message(raw, source_line, column, text, line):
    match = _NO_FIELD.match(raw)
    if match:
        message_name, field_name = match.groups()
        descriptor = caffe_pb2.DESCRIPTOR.pool.FindMessageTypeByName(message_name)
        hint = _did_you_mean(field_name, list(descriptor.fields_by_name))
        return f'{_short_name(message_name)} has no field "{field_name}"{hint}'

    match = _NO_ENUM_NAME.match(raw)
    if match:
        enum_name, value = match.groups()
        names = list(caffe_pb2.DESCRIPTOR.pool.FindEnumTypeByName(enum_name).values_by_name)
        hint = _did_you_mean(value, names) or f" (use one of {', '.join(names)})"
        return f'{_short_name(enum_name)} has no value "{value}"{hint}'

    match = _NO_ENUM_NUMBER.match(raw)
    if match:
        enum_name, number = match.groups()
        values = caffe_pb2.DESCRIPTOR.pool.FindEnumTypeByName(enum_name).values
        choices = ", ".join(f"{v.name}={v.number}" for v in values)
        return f"{_short_name(enum_name)} has no value {number} (use one of {choices})"

    match = _REPEATED.match(raw)
    if match:
        message_name, field_name = match.groups()
        return (f'"{field_name}" is given more than once in '
                f"{_short_name(message_name)}; it takes a single value")

    match = _EXPECTED_STRING.match(raw)
    if match:
        value = match.group(1)
        return f'expected a quoted string, got {value} (write "{value}")'

    match = _BAD_NUMBER.match(raw)
    if match:
        kind, value = match.groups()
        wanted = "an integer" if kind == "integer" else "a number"
        return f"expected {wanted}, got {value}"

    match = _OUT_OF_RANGE.match(raw)
    if match:
        field = _field_before(source_line, column)
        named = f' for "{field}"' if field else ""
        return f"value {match.group(1)} is out of range{named}"

    if raw.startswith('Expected "}"'):
        opened = _unclosed_brace_line(text)
        if opened is not None:
            return f'the "{{" opened on line {opened} is never closed (add "}}")'
        return f'expected "}}", got {_token_at(source_line, column)}'

    match = _EXPECTED_ID.match(raw)
    if match:
        token = match.group(1)
        if token == "}":
            return 'unexpected "}" (one "}" too many?)'
        return f"expected a field name, got {token}"

    if raw.startswith('Expected "{"'):
        field = _field_before(source_line, column)
        if field:
            return f'"{field}" is a message: write {field} {{ ... }}'
        return 'expected "{"'

    if raw.startswith('Expected "true" or "false"'):
        return f"expected true or false, got {_token_at(source_line, column)}"

    if raw.startswith('Expected ":"'):
        return f'expected ":" after the field name, got {_token_at(source_line, column)}'

    message = raw.rstrip(".")
    return "syntax error: " + message[:1].lower() + message[1:]


def _describe_missing_required(message, path):
    missing = message.FindInitializationErrors()
    described = []
    for item in missing:
        match = re.match(r"layer\[(\d+)\]\.(.*)", item)
        if match and isinstance(message, caffe_pb2.NetParameter):
            layer = message.layer[int(match.group(1))]
            described.append(f'layer "{layer.name}": {match.group(2)}')
        else:
            described.append(item)
    prefix = f"{path}: " if path else ""
    return prefix + "missing required field " + ", ".join(described)


# --------------------------------------------------------------------------
# Writing


def format_message(message):
    """Text of any proto message in Caffe's layout (two-space indents)."""
    return text_format.MessageToString(message)


def format_net(net):
    """Prototxt text of a NetParameter."""
    return format_message(net)


def format_solver(solver):
    """Prototxt text of a SolverParameter."""
    return format_message(solver)


def write_text_atomic(path, text):
    """Write ``text`` to ``path`` via a temporary file in the same directory."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise NetspecError(f"{path}: directory {directory} does not exist")
    handle, temp_path = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temp_path, 0o666 & ~_current_umask())
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.unlink(temp_path)
        raise


def _current_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_net(path, net):
    """Write a NetParameter as prototxt (atomically)."""
    write_text_atomic(path, format_net(net))


def write_solver(path, solver):
    """Write a SolverParameter as prototxt (atomically)."""
    write_text_atomic(path, format_solver(solver))
