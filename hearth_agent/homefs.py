"""Files under HOME, without ever following a symlink: reading the credentials a CLI wrote (browser sandbox) and
installing delivered credentials (CLI sandbox).

Every path is relative to HOME and walked one component at a time with `O_NOFOLLOW` directory descriptors, so a
symlink anywhere along the path (a parent directory or the file itself) is refused instead of followed. HOME
itself is the root of trust and may be anything.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
import stat
from typing import Any

from hearth_agent.record import dataclass  # not dataclasses: it imports inspect (hearth_agent/record.py)

MAX_FILE = 256 * 1024  # a credential file is a few KB; the controller's callback body limit is 1 MiB
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PathRefused(ValueError):
    """A path is absolute, escapes HOME, or runs through a symlink or a non-directory."""


def relative_parts(path: Any) -> list[str]:
    """The components of a path relative to HOME; refuses absolute paths, `..`, NUL and empty paths."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise PathRefused(f"{path!r} is not a path")
    if path.startswith("/"):
        raise PathRefused(f"{path!r} is absolute; paths are relative to the home directory")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        raise PathRefused(f"{path!r} names the home directory itself")
    if ".." in parts:
        raise PathRefused(f"{path!r} contains '..'")
    return parts


def _open_parent(home: str, parts: list[str], create: bool) -> int:
    """An fd of the directory holding `parts[-1]`; parents are created 0700 when `create`. Caller closes it."""
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, name in enumerate(parts[:-1]):
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass  # created meanwhile (or a dangling symlink: the open below refuses it)
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise PathRefused(f"{'/'.join(parts[: i + 1])} is a symlink or not a directory") from None
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_file(home: str, path: str, limit: int = MAX_FILE) -> bytes | None:
    """The content of HOME/`path`, or None when it (or a parent) does not exist. Refuses symlinks."""
    parts = relative_parts(path)
    try:
        parent = _open_parent(home, parts, create=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PathRefused(f"{path} is a symlink") from None
            raise
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise PathRefused(f"{path} is not a regular file")
            data = f.read(limit + 1)
    finally:
        os.close(parent)
    if len(data) > limit:
        raise PathRefused(f"{path} is larger than {limit} bytes")
    return data


@dataclass(frozen=True)
class NewFile:
    target: str
    parts: list[str]
    mode: int
    data: bytes
    merge: dict[str, Any] | None = None  # a JSON object merged into the existing file instead of `data`


def parse_files(items: Any) -> list[NewFile]:
    """Validate a whole `[{target, mode, data_b64 | merge_json}]` batch before anything is written."""
    if not isinstance(items, list) or not items:
        raise ValueError("files must be a non-empty list of {target, mode, data_b64}")
    out: list[NewFile] = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("each file must be an object {target, mode, data_b64}")
        target, mode, data_b64 = item.get("target"), item.get("mode", 0o600), item.get("data_b64")
        parts = relative_parts(target)
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise ValueError(f"mode of {target} must be an integer between 0 and 0o777")
        if "merge_json" in item:
            merge = item["merge_json"]
            if not isinstance(merge, dict) or not merge or data_b64 is not None:
                raise ValueError(f"merge_json of {target} must be a non-empty JSON object (and no data_b64)")
            out.append(NewFile("/".join(parts), parts, mode, b"", merge))
            continue
        if not isinstance(data_b64, str):
            raise ValueError(f"data_b64 of {target} must be a base64 string")
        try:
            data = base64.b64decode(data_b64, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"data_b64 of {target} is not valid base64") from None
        if len(data) > MAX_FILE:
            raise ValueError(f"{target} is larger than {MAX_FILE} bytes")
        out.append(NewFile("/".join(parts), parts, mode, data))
    if len({f.target for f in out}) != len(out):
        raise ValueError("targets must be unique")
    return out


def install(home: str, files: list[NewFile]) -> list[str]:
    """Write each file atomically (temp file in the same directory with the mode, fsync, rename); returns targets.
    A `merge` file is the existing JSON object there (if any) with `merge` merged in (see `merged`); every merge is
    read and checked before anything is written."""
    files = [_merged_file(home, f) if f.merge is not None else f for f in files]
    for f in files:
        parent = _open_parent(home, f.parts, create=True)
        try:
            _install_one(parent, f)
        finally:
            os.close(parent)
    return [f.target for f in files]


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`old` with `new` merged in: objects recursively, anything else replaced; keys only in `old` are kept."""
    out = dict(old)
    for key, value in new.items():
        prev = out.get(key)
        out[key] = merged(prev, value) if isinstance(prev, dict) and isinstance(value, dict) else value
    return out


def _merged_file(home: str, f: NewFile) -> NewFile:
    assert f.merge is not None
    raw = read_file(home, f.target)
    mode, current = f.mode, {}
    if raw is not None and raw.strip():
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ValueError(
                f"{f.target} in the CLI sandbox is not a JSON object, so the settings the CLI needs cannot be "
                "merged into it; fix or remove that file, then sign in again"
            )
        current = parsed
        parent = _open_parent(home, f.parts, create=False)
        try:
            mode = stat.S_IMODE(os.stat(f.parts[-1], dir_fd=parent, follow_symlinks=False).st_mode)
        finally:
            os.close(parent)
    data = (json.dumps(merged(current, f.merge), indent=2) + "\n").encode()
    return NewFile(f.target, f.parts, mode, data)


def _install_one(parent: int, f: NewFile) -> None:
    name = f.parts[-1]
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISLNK(st.st_mode):
            raise PathRefused(f"{f.target} is a symlink")
        if not stat.S_ISREG(st.st_mode):
            raise PathRefused(f"{f.target} exists and is not a regular file")
    tmp = f".{name}.hearth-{os.urandom(6).hex()}"  # not secrets: it imports hmac, random
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
    try:
        try:
            os.fchmod(fd, f.mode)  # exactly the requested mode, whatever the umask
            view = memoryview(f.data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=parent)
        except FileNotFoundError:
            pass
        raise
    os.fsync(parent)


def remove(home: str, targets: Any) -> tuple[list[str], list[str]]:
    """Delete each HOME-relative target (a revoked credential); returns (removed, already absent).

    Parents are walked without following symlinks; a symlink *as* the target is removed itself (unlink never follows
    it). A directory or any other non-file is refused. All paths are validated before anything is deleted.
    """
    if not isinstance(targets, list) or not targets:
        raise ValueError("targets must be a non-empty list of paths relative to the home directory")
    batch = [relative_parts(t) for t in targets]
    removed: list[str] = []
    absent: list[str] = []
    for parts in batch:
        target = "/".join(parts)
        try:
            parent = _open_parent(home, parts, create=False)
        except (FileNotFoundError, NotADirectoryError):
            absent.append(target)
            continue
        try:
            try:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                absent.append(target)
                continue
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise PathRefused(f"{target} is not a file")
            os.unlink(parts[-1], dir_fd=parent)
            os.fsync(parent)
            removed.append(target)
        finally:
            os.close(parent)
    return removed, absent
