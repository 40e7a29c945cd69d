"""The YAML config: parsed by pyyaml, validated by pydantic v2 into frozen models.

Every problem becomes one line that names the file, the key path and the bad value::

    config.yaml: watches[1].settle.quiet: 'soon' is not a duration (e.g. 5s, 2m)

Relative paths are resolved against the config file's folder. ``${VAR}`` in a path is
expanded from the environment (``token_file: ${CREDENTIALS_DIRECTORY}/token``).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    InstanceOf,
    SecretStr,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from syncd.bandwidth import Timetable
from syncd.units import parse_duration, parse_listen, parse_size

Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]

DEFAULT_PORT = 8765


class ConfigError(Exception):
    """A config that cannot run. ``str(err)`` is one line per problem, ready to print."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


class _SubkeyError(ValueError):
    """A validator's complaint about one key inside the mapping it checks: the key joins the
    key path of the error line (``watches[0].transcode.crf: ...``)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Listen = Annotated[tuple[str, int], BeforeValidator(parse_listen)]


def read_secret(*, file: Path | None = None, env: str | None = None, key: str = "") -> str:
    """A secret from a file or an environment variable, stripped; ValueError (prefixed with
    ``key``) when it cannot be read or is empty. One place for every secret source."""
    prefix = f"{key}: " if key else ""
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"{prefix}cannot read {str(file)!r}: {exc.strerror}") from None
        if not text:
            raise ValueError(f"{prefix}{str(file)!r} is empty")
        return text
    text = os.environ.get(env or "", "").strip()
    if not text:
        raise ValueError(f"{prefix}environment variable {env!r} is not set")
    return text


class TokenSource(_Model):
    """Exactly one of ``token`` / ``token_file`` / ``token_env``, or none (no auth)."""

    token: SecretStr | None = None
    token_file: Path | None = None
    token_env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TokenSource:
        given = [k for k in ("token", "token_file", "token_env") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of token, token_file, token_env (got {', '.join(given)})")
        return self

    def has_token_source(self) -> bool:
        return any(getattr(self, k) is not None for k in ("token", "token_file", "token_env"))

    def resolve_token(self) -> str | None:
        """The secret itself; raises ValueError naming the key on a bad source."""
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None:
            return read_secret(file=self.token_file, key="token_file")
        if self.token_env is not None:
            return read_secret(env=self.token_env, key="token_env")
        return None


class Timeouts(_Model):
    connect: Duration = 10.0
    read: Duration = 120.0


class RetryPolicy(_Model):
    initial: Duration = 1.0
    """first pause between tries of one request; doubles with jitter"""
    max: Duration = 60.0
    """cap of the pause between tries of one request"""
    budget: Duration = 300.0
    """how long one request is retried before its file goes to `waiting`"""
    waiting_initial: Duration = 30.0
    """first pause before a `waiting` file is tried again; doubles per attempt"""
    waiting_max: Duration = 3600.0
    """cap of that pause: a waiting file is retried at least this often, forever"""


class TargetSettings(TokenSource):
    """The keys every target has; each protocol's settings model (``Settings`` in its module
    under syncd/upload/, found through syncd.upload.registry) adds its own."""

    protocol: str
    part_size: Size = 50 * 1024**2
    timeout: Timeouts = Timeouts()
    retry: RetryPolicy = RetryPolicy()
    verify_tls: bool = True
    ca_bundle: Path | None = None
    bandwidth: Timetable = ()

    @field_validator("part_size")
    @classmethod
    def _part_size(cls, value: int) -> int:
        if not 64 * 1024 <= value <= 5 * 1024**3:
            raise ValueError(f"{value} is not between 64KiB and 5GiB")
        return value

    def environment_problems(self, *, skip_secrets: bool = False) -> list[str]:
        """What keeps this target from working on this machine (secrets, files), each as
        ``key: reason``; a protocol adds its own. ``skip_secrets``: secrets are not read."""
        problems = []
        try:
            if not skip_secrets:
                self.resolve_token()
        except ValueError as exc:
            problems.append(str(exc))
        if self.ca_bundle is not None and not self.ca_bundle.is_file():
            problems.append(f"ca_bundle: {str(self.ca_bundle)!r} is not a file")
        return problems

    def verified_by(self) -> str:
        """What a ``done`` file's copy on this target is verified by, as configured: ``md5``
        (the server's MD5 of the whole file), ``part-checksum``, ``read-back`` (syncd reads
        the upload back), or ``size`` (only the byte count). A destructive after-action
        (delete, move) needs more than ``size`` unless the target accepts it explicitly."""
        return "md5"

    def accepts_size_only(self) -> bool:
        """The config says a byte count is enough (tus ``verify: size``)."""
        return False

    def describe(self) -> str:
        """Where the target uploads to, for the start-up log line."""
        return self.protocol

    def tls_verify(self) -> bool | str:
        """What requests' ``verify=`` takes: the CA bundle's path, or whether to verify."""
        return str(self.ca_bundle) if self.ca_bundle else self.verify_tls


def http_url(value: str) -> str:
    """An http(s) URL, with a trailing slash; for the protocols' ``url`` validators."""
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value if value.endswith("/") else value + "/"


class Settle(_Model):
    quiet: Duration = 5.0
    max_wait: Duration = 600.0
    on_close: bool = False
    """the fast path: ready ``close_quiet`` after a close when nobody holds the file open for writing"""
    close_quiet: Duration = 0.25

    @model_validator(mode="after")
    def _order(self) -> Settle:
        if self.quiet <= 0:
            raise ValueError("quiet must be more than 0s")
        if self.max_wait < self.quiet:
            raise ValueError(f"max_wait ({self.max_wait:g}s) is shorter than quiet ({self.quiet:g}s)")
        if self.close_quiet <= 0:
            raise ValueError("close_quiet must be more than 0s")
        if self.on_close and self.close_quiet > self.quiet:
            raise ValueError(f"close_quiet ({self.close_quiet:g}s) is longer than quiet ({self.quiet:g}s)")
        return self


class Watch(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    path: Path
    target: str
    recursive: bool = True
    poll: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    settle: Settle = Settle()
    remote_dir: str = ""
    after_upload: Literal["keep", "delete", "move"] = "keep"
    done_dir: Path | None = None
    failed_dir: Path | None = None
    transcode: Literal["optimize_for_web"] | dict[str, Any] | None = None
    upload_original: bool = False
    skip_if_web_ready: bool = True
    priority: int = Field(0, ge=-1000, le=1000)
    """higher goes first: a free upload worker takes a due file of the highest priority"""
    order: Literal["oldest", "smallest"] = "oldest"
    """which due file of this watch goes first"""

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _globs(cls, value: object) -> object:
        if isinstance(value, str):
            return (value,)  # `include: "*.pdf"` means a list of that one glob
        if value is None or isinstance(value, (list, tuple)):
            return () if value is None else value
        raise ValueError(f"{value!r} is not a glob or a list of globs")

    @field_validator("remote_dir")
    @classmethod
    def _remote_dir(cls, value: str) -> str:
        try:
            render_remote_dir(value, watch="w", when=0.0)
        except (KeyError, ValueError, IndexError) as exc:
            raise ValueError(f"{value!r} is not a valid template ({exc}); use {{watch}}, "
                             "{year}, {month}, {day}, {date}, {host}") from None
        return value

    @field_validator("transcode")
    @classmethod
    def _transcode(cls, value: object) -> object:
        if isinstance(value, dict):
            from syncd.transcode import TranscodeConfig

            try:
                TranscodeConfig.from_mapping(value)
            except ValueError as exc:  # "crf: 99 must be ..." -> key path transcode.crf
                key, sep, rest = str(exc).partition(": ")
                if sep and key in value:
                    raise _SubkeyError(key, rest) from None
                raise
        return value

    @model_validator(mode="after")
    def _after(self) -> Watch:
        if self.after_upload == "move" and self.done_dir is None:
            raise ValueError("after_upload: move needs done_dir")
        if self.poll and self.settle.on_close:
            raise ValueError("settle.on_close: a polling watch (poll: true) sees no closes; "
                             "leave on_close out or poll: false")
        return self


SMALL_FILE_MAX = 1024**2
"""a file of at most this many bytes is small: it may use ``concurrency.small_uploads``"""


class Concurrency(_Model):
    uploads: int = Field(2, ge=1, le=64)
    small_uploads: int = Field(8, ge=1, le=64)
    """files uploaded at once when the extra ones are small (<= SMALL_FILE_MAX): a small file
    costs round trips, not bandwidth, so more of them in flight hide the latency"""
    transcodes: int = Field(1, ge=1, le=16)

    @property
    def workers(self) -> int:
        return max(self.uploads, self.small_uploads)


class Receiver(TokenSource):
    root: Path
    listen: Listen = ("127.0.0.1", DEFAULT_PORT)
    max_size: Size | None = 10 * 1024**3
    min_free: Size = 1024**3
    expire: Duration = 86400.0
    base_path: str = "/"
    on_conflict: Literal["rename", "overwrite", "fail"] = "rename"
    trust_forwarded: bool = False
    allow_anonymous: bool = False


class Log(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class Metrics(_Model):
    listen: Listen | None = None


class Config(_Model):
    journal: Path
    staging_dir: Path
    targets: dict[str, SerializeAsAny[InstanceOf[TargetSettings]]]
    watches: tuple[Watch, ...]
    concurrency: Concurrency = Concurrency()
    rescan_interval: Duration = 600.0
    transcode_nice: int = Field(10, ge=0, le=19)
    receiver: Receiver | None = None
    log: Log = Log()
    metrics: Metrics = Metrics()
    bandwidth: Timetable = ()
    source: str = Field("<built-in>", exclude=True)

    def watch(self, name: str) -> Watch:
        for watch in self.watches:
            if watch.name == name:
                return watch
        raise KeyError(name)


def render_remote_dir(template: str, *, watch: str, when: float) -> str:
    """Fill a ``remote_dir`` template; the result is a relative POSIX path or ''."""
    text = template
    if "{" in template or "}" in template:  # without a placeholder (as the default, ""), nothing to fill
        import socket
        import time

        tm = time.localtime(when)
        text = template.format(
            watch=watch,
            year=f"{tm.tm_year:04d}",
            month=f"{tm.tm_mon:02d}",
            day=f"{tm.tm_mday:02d}",
            date=time.strftime("%Y-%m-%d", tm),
            host=socket.gethostname(),
        )
    return "/".join(part for part in text.split("/") if part not in ("", "."))


# --- loading ---------------------------------------------------------------------------

_PATH_KEYS = {"journal", "staging_dir", "path", "done_dir", "failed_dir", "token_file", "ca_bundle", "root",
              "file", "secret_access_key_file"}


_SECRET_PATH_KEYS = {"token_file", "secret_access_key_file"}
_UNSET_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _resolve_paths(node: Any, base: Path, loc: str, errors: list[str], name: str, *, skip_secrets: bool) -> Any:
    """Expand ``${VAR}`` and ``~`` and anchor relative paths at ``base``, in place of strings.

    With ``skip_secrets``, a secret's path that names an unset variable is left as written."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            sub = f"{loc}.{key}" if loc else str(key)
            if key in _PATH_KEYS and isinstance(value, str):
                if skip_secrets and key in _SECRET_PATH_KEYS and _unset_vars(value):
                    out[key] = value
                else:
                    out[key] = _expand_path(value, base, sub, errors, name)
            else:
                out[key] = _resolve_paths(value, base, sub, errors, name, skip_secrets=skip_secrets)
        return out
    if isinstance(node, list):
        return [_resolve_paths(v, base, f"{loc}[{i}]", errors, name, skip_secrets=skip_secrets)
                for i, v in enumerate(node)]
    return node


def _unset_vars(value: str) -> list[str]:
    names = [a or b for a, b in _UNSET_VAR.findall(value)]
    return [var for var in names if var not in os.environ]


def _expand_path(value: str, base: Path, loc: str, errors: list[str], name: str) -> str:
    for var in _unset_vars(value):
        errors.append(f"{name}: {loc}: {value!r} uses ${{{var}}}, which is not set")
    path = Path(os.path.expanduser(os.path.expandvars(value)))
    return str(path if path.is_absolute() else (base / path))


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "literal[", "dict[", "tagged-union")):
            continue  # pydantic's union branch names are noise to a reader
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    msg = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in ("value_error", "assertion_error"):
        return msg
    return f"{value!r}: {msg[0].lower()}{msg[1:]}" if not isinstance(value, dict) else msg


def _errors_from(exc: ValidationError, name: str, *, prefix: tuple[Any, ...] = ()) -> list[str]:
    seen: dict[str, str] = {}
    for error in exc.errors():
        loc = _loc(prefix + tuple(error["loc"]))
        if isinstance(sub := error.get("ctx", {}).get("error"), _SubkeyError):
            loc = f"{loc}.{sub.key}"
        line = f"{name}: {loc}: {_describe(error)}" if loc else f"{name}: {_describe(error)}"
        # a union reports one error per branch: keep the first per key path
        seen.setdefault(loc, line)
    return list(seen.values())


class _DuplicateKey(Exception):
    def __init__(self, key: object, *, line: int, first_line: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first_line = key, line, first_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """pyyaml's safe loader, except that a key given twice in one mapping is an error
    (pyyaml keeps the last one silently). Keys brought in by a ``<<`` merge may be overridden."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in first:
                        raise _DuplicateKey(key, line=line, first_line=first[key])
                    first[key] = line
                except TypeError:
                    continue  # an unhashable key: pyyaml's own error names it
        return super().construct_mapping(node, deep=deep)


def load_config(path: Path | str, *, check: bool = True, skip_secrets: bool = False) -> Config:
    """Read, validate and check a config file; raises ConfigError with one line per problem.

    ``check=False`` is for commands that only read the journal (``status``, ``retry``):
    secrets and folders are not looked at, so they work outside the service's environment
    (where ``${CREDENTIALS_DIRECTORY}`` is unset). ``skip_secrets=True`` checks everything
    except the tokens themselves (``check-config --skip-secrets``): a ``token_file`` whose
    path names an unset variable is kept as written, and no token is read."""
    path = Path(path)
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config: {exc.strerror}"]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except _DuplicateKey as exc:
        raise ConfigError([f"{name}: line {exc.line}: duplicate key {exc.key!r} (first at line {exc.first_line})"]) \
            from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{name}: {where}not valid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{name}: the top level must be a mapping of keys"])
    return build_config(data, base=path.resolve().parent, name=name, check=check, skip_secrets=skip_secrets)


def build_config(data: dict[str, Any], *, base: Path, name: str, check: bool = True,
                 skip_secrets: bool = False) -> Config:
    errors: list[str] = []
    data = _resolve_paths(data, base, "", errors, name, skip_secrets=skip_secrets)
    if errors and check:
        raise ConfigError(errors)
    targets, errors = _validate_targets(data.get("targets"), name)
    try:
        config = Config.model_validate({**data, "targets": targets, "source": name})
    except ValidationError as exc:
        errors += _errors_from(exc, name)
    if errors:
        raise ConfigError(errors)
    errors = check_environment(config, skip_secrets=skip_secrets) if check else []
    if errors:
        raise ConfigError(errors)
    return config


def _validate_targets(raw: Any, name: str) -> tuple[Any, list[str]]:
    """Each target through its own protocol's settings model (``protocol:`` picks it;
    ``chunked`` when absent), so each protocol validates its own keys."""
    from syncd.upload import registry

    if not isinstance(raw, dict):
        return raw, []  # Config's own validation says what is wrong
    errors: list[str] = []
    out: dict[Any, Any] = {}
    for key, value in raw.items():
        if not isinstance(value, dict):
            errors.append(f"{name}: targets.{key}: must be a mapping of keys")
            continue
        protocol = value.get("protocol", registry.DEFAULT)
        try:
            entry = registry.lookup(protocol)
        except KeyError:
            errors.append(f"{name}: targets.{key}.protocol: {protocol!r} is not a protocol "
                          f"(known: {', '.join(registry.names())})")
            continue
        try:
            out[key] = entry.settings.model_validate({**value, "protocol": protocol})
        except ValidationError as exc:
            errors += _errors_from(exc, name, prefix=("targets", key))
    return out, errors


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_environment(config: Config, *, skip_secrets: bool = False) -> list[str]:
    """Checks that need the filesystem and the whole config at once (and the tokens,
    unless ``skip_secrets``)."""
    name = config.source
    errors: list[str] = []
    names = [w.name for w in config.watches]
    if not config.watches:
        errors.append(f"{name}: watches: at least one watch is required")
    if not config.targets:
        errors.append(f"{name}: targets: at least one target is required")
    for key, target in config.targets.items():
        errors += [f"{name}: targets.{key}.{problem}"
                   for problem in target.environment_problems(skip_secrets=skip_secrets)]
    if config.receiver is not None:
        try:
            token = config.receiver.resolve_token() if not skip_secrets else config.receiver.has_token_source()
        except ValueError as exc:
            errors.append(f"{name}: receiver.{exc}")
        else:
            if not token and not config.receiver.allow_anonymous:
                errors.append(f"{name}: receiver: give token, token_file or token_env "
                              "(or allow_anonymous: true)")

    roots: list[tuple[str, Path, bool]] = []
    for i, watch in enumerate(config.watches):
        loc = f"{name}: watches[{i}]"
        if watch.transcode is not None:
            missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
            if missing:
                errors.append(f"{loc}.transcode: watch {watch.name!r} transcodes videos, but "
                              f"{' and '.join(missing)} is not on PATH (install the ffmpeg package)")
        if names.count(watch.name) > 1:
            errors.append(f"{loc}.name: {watch.name!r} is used by more than one watch")
        if watch.target not in config.targets:
            known = ", ".join(sorted(config.targets)) or "none"
            errors.append(f"{loc}.target: {watch.target!r} is not a target (known: {known})")
        target = config.targets.get(watch.target)
        if watch.after_upload != "keep" and target is not None and target.verified_by() == "size" \
                and not target.accepts_size_only():
            errors.append(f"{loc}.after_upload: {watch.after_upload} needs a verified copy, but target "
                          f"{watch.target!r} verifies only sizes: set targets.{watch.target}.verify: read_back "
                          "(or verify: size to accept that)")
        root = watch.path.resolve()
        if not root.is_dir():
            errors.append(f"{loc}.path: {str(watch.path)!r} does not exist or is not a folder")
            continue
        if not os.access(root, os.R_OK | os.X_OK):
            errors.append(f"{loc}.path: {str(watch.path)!r} is not readable")
            continue
        for other_name, other_root, _ in roots:
            if _within(root, other_root) or _within(other_root, root):
                errors.append(f"{loc}.path: {str(watch.path)!r} overlaps watch {other_name!r}")
        roots.append((watch.name, root, watch.recursive))
        if watch.after_upload == "delete" and watch.done_dir is not None:
            errors.append(f"{loc}.done_dir: is only used with after_upload: move")

    def rewatched(path: Path) -> str | None:
        path = path.resolve()
        for wname, root, recursive in roots:
            if path == root or (_within(path, root) and (recursive or path.parent == root)):
                return wname
        return None

    for i, watch in enumerate(config.watches):
        for key in ("done_dir", "failed_dir"):
            value = getattr(watch, key)
            if value is not None and (hit := rewatched(value)):
                errors.append(f"{name}: watches[{i}].{key}: {str(value)!r} lies inside watch "
                              f"{hit!r} and would be uploaded again")
    if hit := rewatched(config.staging_dir):
        errors.append(f"{name}: staging_dir: {str(config.staging_dir)!r} lies inside watch {hit!r}")
    if config.receiver is not None and (hit := rewatched(config.receiver.root)):
        errors.append(f"{name}: receiver.root: {str(config.receiver.root)!r} lies inside watch {hit!r}")
    for key, folder in (("journal", config.journal.parent), ("staging_dir", config.staging_dir)):
        if problem := _writable_dir_problem(folder):
            errors.append(f"{name}: {key}: {problem}")
    if hit := rewatched(config.journal):
        errors.append(f"{name}: journal: {str(config.journal)!r} lies inside watch {hit!r}")
    return errors


def _writable_dir_problem(folder: Path) -> str | None:
    """None when ``folder`` exists (or can be made) and can be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create folder {str(folder)!r}: {exc.strerror}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"folder {str(folder)!r} cannot be written"
    return None


def default_config(base: Path, *, port: int = DEFAULT_PORT, create_folders: bool = True) -> Config:
    """The quick start: watch ``base/drop``, upload to an embedded receiver on loopback
    storing into ``base/received``, journal and staging in ``base/.syncd``.

    ``create_folders=False`` makes nothing and checks nothing on disk: for the commands that
    only read the quick start's journal (``status``, ``retry``) or print it (``check-config``)."""
    if create_folders:
        for folder in ("drop", "received", ".syncd"):
            (base / folder).mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    data = {
        "journal": ".syncd/journal.db",
        "staging_dir": ".syncd/staging",
        "receiver": {"root": "received", "listen": f"127.0.0.1:{port}", "token": token},
        "targets": {
            "local": {"url": f"http://127.0.0.1:{port}/chunked_upload/", "token": token},
        },
        "watches": [{"name": "drop", "path": "drop", "target": "local", "settle": {"quiet": "2s"}}],
    }
    return build_config(data, base=base, name="<built-in>", check=create_folders)


_SECRET_KEYS = {"token", "access_key_id"}


def redacted(config: Config) -> dict[str, Any]:
    """The resolved config as plain data, with every secret replaced by ``***``."""

    def scrub(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("***" if k in _SECRET_KEYS and v is not None else scrub(v)) for k, v in node.items()}
        if isinstance(node, SecretStr):
            return "***"
        if isinstance(node, (list, tuple)):
            return [scrub(v) for v in node]
        if isinstance(node, Path):
            return str(node)
        return node

    return scrub(config.model_dump(mode="python"))
