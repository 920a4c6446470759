"""Other tools' formats in and out: D4RL HDF5 files, Minari datasets, human labels as JSON Lines or CSV.

No ``d4rl`` package is needed (it drags in mujoco-py and old gym): D4RL files are plain HDF5 and are read
with h5py. Minari datasets are read and written with the ``minari`` package, from local directories only.

Human labels (JSON Lines: one object per line; CSV: a header row with the same names):

==============  =========================================================================================
field           meaning
==============  =========================================================================================
query_id        the query's id (integer or string; rows with one id are one query, e.g. a ranking)
a_episode       episode index of segment a in the trajectory dataset
a_start         first step of segment a inside its episode
a_length        number of steps of segment a
b_episode       … the same three for segment b
b_start
b_length
choice          ``a``, ``b``, ``equal``, ``skip``, or a probability in [0, 1] that a is preferred
annotator       who answered (free text, no control characters)
group           annotator group, an integer >= 0 (optional, default 0)
timestamp       when, ISO 8601 (optional)
==============  =========================================================================================

An import takes the whole file or nothing: every row is checked first, and the first bad one is named.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import sys
import unicodedata
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pbrl.data.preferences import PreferenceDataset
from pbrl.data.store import Episode, TrajectoryDataset, atomic_h5, atomic_write_text, open_h5, write_trajectories
from pbrl.errors import ConfigError, DatasetError, describe
from pbrl.fields import short_repr

LABEL_FIELDS = ("query_id", "a_episode", "a_start", "a_length", "b_episode", "b_start", "b_length", "choice",
                "annotator", "group", "timestamp")
_CHOICES = {"a": 1.0, "b": 0.0, "equal": 0.5}


# ---------------------------------------------------------------------------------------------------------
# D4RL
# ---------------------------------------------------------------------------------------------------------

def read_d4rl(path: str | os.PathLike) -> tuple[list[Episode], dict[str, Any]]:
    """Episodes of a D4RL-format HDF5 file (``observations``, ``actions``, ``rewards``, ``terminals``,
    ``timeouts``, optional ``next_observations`` and ``infos/*``).

    An episode ends at a step whose ``terminals`` (terminated) or ``timeouts`` (truncated) flag is set; steps
    after the last flag form a final truncated episode. The observation after an episode's last step is
    ``next_observations[last]`` when the file has it, else the last observation itself (D4RL's MuJoCo files
    do not store it). One-dimensional numeric ``infos/*`` arrays are kept; others are listed in the metadata.
    """
    path = Path(path)
    with open_h5(path, "a D4RL-format HDF5 file") as f:
        for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
            if key not in f:
                raise DatasetError(describe(str(path), f"key '{key}'", "missing",
                                            "the D4RL keys observations, actions, rewards, terminals, timeouts"))
        obs, act = f["observations"][()], f["actions"][()]
        rew = f["rewards"][()].reshape(-1)
        term = f["terminals"][()].reshape(-1).astype(bool)
        tout = f["timeouts"][()].reshape(-1).astype(bool)
        n = len(obs)
        for key, arr in (("actions", act), ("rewards", rew), ("terminals", term), ("timeouts", tout)):
            if len(arr) != n:
                raise DatasetError(describe(str(path), f"'{key}' length", len(arr), f"{n} (the length of 'observations')"))
        if obs.ndim != 2 or act.ndim != 2:
            raise DatasetError(describe(str(path), "'observations'/'actions' rank", f"{obs.ndim}/{act.ndim}", "2/2 (flat Box spaces)"))
        if not np.all(np.isfinite(rew)):
            bad = int(np.flatnonzero(~np.isfinite(rew))[0])
            raise DatasetError(describe(str(path), "'rewards'", f"non-finite value {rew[bad]} at row {bad}", "finite floats"))
        nxt = f["next_observations"][()] if "next_observations" in f else None
        infos, skipped = {}, []
        if "infos" in f:
            for key in f["infos"]:
                arr = f[f"infos/{key}"]
                if isinstance(arr, h5py.Dataset) and arr.ndim == 1 and arr.shape[0] == n and arr.dtype.kind in "biuf":
                    infos[key] = arr[()].astype(np.float32)
                else:
                    skipped.append(key)
        meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    ends = np.flatnonzero(term | tout)
    bounds = list(zip(np.r_[0, ends[:-1] + 1], ends + 1))
    if not len(ends) or ends[-1] != n - 1:
        bounds.append((int(ends[-1] + 1) if len(ends) else 0, n))
    episodes = []
    for lo, hi in bounds:
        if hi <= lo:
            continue
        final = nxt[hi - 1] if nxt is not None else obs[hi - 1]
        episodes.append(Episode(obs[lo:hi].astype(np.float32), act[lo:hi].astype(np.float32), rew[lo:hi].astype(np.float32),
                                bool(term[hi - 1]), np.asarray(final, np.float32), "d4rl",
                                {k: v[lo:hi] for k, v in infos.items()}))
    return episodes, {"source": str(path), "d4rl_attrs": {k: str(v) for k, v in meta.items()}, "skipped_infos": skipped}


def import_d4rl(path: str | os.PathLike, out: str | os.PathLike, *, env_id: str, seed: int = 0) -> Path:
    episodes, meta = read_d4rl(path)
    return write_trajectories(out, episodes, env_id=env_id, behaviour_policy=f"imported from D4RL file {Path(path).name}",
                              seed=seed, metadata=meta)


def export_d4rl(trajectories: TrajectoryDataset, out: str | os.PathLike) -> Path:
    """Write ``trajectories`` in D4RL's flat layout (``observations``, ``actions``, ``rewards``, ``terminals``,
    ``timeouts``, ``next_observations``, ``infos/*``), atomically, for tools that read D4RL files (d3rlpy, CORL).

    ``timeouts`` marks the last step of every episode that did not terminate, so every episode boundary survives
    the round trip (``read_d4rl`` gives back the same episodes). An existing ``out`` is never replaced, not even
    one another export wrote while this one ran (ConfigError naming ``--out``)."""
    from pbrl.data.transitions import next_observations

    out = Path(out)
    try:
        _write_d4rl(trajectories, out, next_observations(trajectories))
    except FileExistsError:
        raise ConfigError(describe("--out", "file", f"{out}, which exists (written by another process while this "
                                   "export ran)", "a new file (an export never replaces one)")) from None
    return out


def _write_d4rl(trajectories: TrajectoryDataset, out: Path, next_obs: np.ndarray) -> None:
    """The D4RL arrays of :func:`export_d4rl`, committed only where ``out`` does not exist yet."""
    last = trajectories.episode_offsets[1:] - 1
    terminals = np.zeros(trajectories.num_transitions, bool)
    timeouts = np.zeros(trajectories.num_transitions, bool)
    terminals[last] = trajectories.terminations[last]
    timeouts[last] = ~trajectories.terminations[last]
    with atomic_h5(out, "d4rl", 1, replace=False) as f:
        f.attrs["env_id"] = trajectories.env_id
        f.attrs["source"] = trajectories.path.name
        f.create_dataset("observations", data=trajectories.observations.astype(np.float32))
        f.create_dataset("actions", data=trajectories.actions.astype(np.float32))
        f.create_dataset("rewards", data=trajectories.rewards.astype(np.float32))
        f.create_dataset("terminals", data=terminals)
        f.create_dataset("timeouts", data=timeouts)
        f.create_dataset("next_observations", data=next_obs.astype(np.float32))
        for key in trajectories.info_keys:
            f.create_dataset(f"infos/{key}", data=trajectories.info(key).astype(np.float32))


# ---------------------------------------------------------------------------------------------------------
# Minari
# ---------------------------------------------------------------------------------------------------------

def _minari_root(root: str | os.PathLike | None) -> None:
    if root is not None:
        os.environ["MINARI_DATASETS_PATH"] = str(Path(root).resolve())


def export_minari(trajectories: TrajectoryDataset, dataset_id: str, *, root: str | os.PathLike | None = None,
                  description: str = "") -> Path:
    """Write ``trajectories`` as the local Minari dataset ``dataset_id`` (e.g. ``pbrl/hopper-mr-v0``) under
    ``root`` (default: Minari's own, ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``)."""
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.storage import get_dataset_path

    _minari_root(root)
    try:
        parse_dataset_id(dataset_id)
    except ValueError:
        raise DatasetError(describe("--dataset-id", "Minari dataset id", repr(dataset_id)[:120],
                                    "(namespace/)name-vN, e.g. pbrl/hopper-mr-v0")) from None
    existing = Path(get_dataset_path(dataset_id))
    if existing.exists():
        raise DatasetError(describe("--dataset-id", "Minari dataset id", f"{dataset_id!r}, which exists at {existing}",
                                    "a new id or version (Minari datasets are never overwritten)"))
    try:  # the env spec lets `ds.recover_environment()` rebuild the simulator (gymnasium envs only)
        env_spec = gym.spec(trajectories.env_id)
    except gym.error.Error:
        env_spec = None
    buffers = []
    for e, ep in enumerate(trajectories):
        obs = np.concatenate([ep.observations, ep.final_observation[None]]).astype(np.float32)
        infos = {k: np.concatenate([v[:1], v]).astype(np.float32) for k, v in ep.infos.items()}  # T + 1 like obs
        term = np.zeros(len(ep), bool)
        trunc = np.zeros(len(ep), bool)
        term[-1], trunc[-1] = ep.terminated, not ep.terminated
        buffers.append(EpisodeBuffer(id=e, observations=obs, actions=ep.actions.astype(np.float32),
                                     rewards=ep.rewards.astype(np.float64), terminations=term, truncations=trunc,
                                     infos=infos))
    box = lambda d: gym.spaces.Box(-np.inf, np.inf, (d,), np.float32)  # noqa: E731
    act_low = float(min(-1.0, trajectories.actions.min()))
    act_high = float(max(1.0, trajectories.actions.max()))
    ds = minari.create_dataset_from_buffers(
        dataset_id, buffers, env=env_spec, observation_space=box(trajectories.obs_dim),
        action_space=gym.spaces.Box(act_low, act_high, (trajectories.act_dim,), np.float32),
        algorithm_name=str(trajectories.metadata.get("behaviour_policy", "")),
        description=description or f"exported by pbrl from {trajectories.path.name} (env {trajectories.env_id})",
        author="pbrl", author_email="pbrl@localhost", code_permalink="https://github.com/pbrl/pbrl",
        data_format="hdf5")
    return Path(ds.spec.data_path).parent


def read_minari(dataset_id: str, *, root: str | os.PathLike | None = None, env_id: str | None = None,
                obs_dim: int | None = None, act_dim: int | None = None) -> tuple[list[Episode], str, dict[str, Any]]:
    """Episodes of a local Minari dataset. ``obs_dim``/``act_dim`` (e.g. from the env preset) are checked
    against the dataset's spaces; both must be flat Boxes."""
    import gymnasium as gym
    import minari

    _minari_root(root)
    try:
        ds = minari.load_dataset(dataset_id, download=False)
    except Exception as exc:  # minari raises several types for a missing or broken local dataset
        raise DatasetError(describe(f"minari:{dataset_id}", "dataset", f"not loadable ({exc.__class__.__name__}: {exc})",
                                    "a local Minari dataset (see MINARI_DATASETS_PATH)")) from None
    for name, space, want in (("observation_space", ds.observation_space, obs_dim), ("action_space", ds.action_space, act_dim)):
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise DatasetError(describe(f"minari:{dataset_id}", name, repr(space), "a flat Box space"))
        if want is not None and space.shape[0] != want:
            raise DatasetError(describe(f"minari:{dataset_id}", f"{name} shape", space.shape, f"({want},) as the environment expects"))
    spec_env = ds.spec.env_spec.id if ds.spec.env_spec is not None else None
    env = env_id or spec_env
    if env is None:
        desc = str(ds.storage.metadata.get("description", ""))
        if "(env " in desc:
            env = desc.rsplit("(env ", 1)[1].rstrip(")")
    if env is None:
        raise DatasetError(describe(f"minari:{dataset_id}", "env_spec", "none", "an env id in the dataset or --env"))
    episodes = []
    for ep in ds.iterate_episodes():
        obs = np.asarray(ep.observations, np.float32)
        infos = {k: np.asarray(v, np.float32)[1:] for k, v in (ep.infos or {}).items()
                 if isinstance(v, np.ndarray) and v.ndim == 1 and len(v) == len(obs)}
        episodes.append(Episode(obs[:-1], np.asarray(ep.actions, np.float32), np.asarray(ep.rewards, np.float32),
                                bool(ep.terminations[-1]), obs[-1], "minari", infos))
    return episodes, env, {"source": f"minari:{dataset_id}", "minari_version": minari.__version__}


def import_minari(dataset_id: str, out: str | os.PathLike, *, root: str | os.PathLike | None = None,
                  env_id: str | None = None, seed: int = 0) -> Path:
    from pbrl.envs.registry import get_env_spec, make_env

    dims = {}
    if env_id is not None:
        space_env = make_env(get_env_spec(env_id).name)
        dims = {"obs_dim": space_env.observation_space.shape[0], "act_dim": space_env.action_space.shape[0]}
        space_env.close()
    episodes, env, meta = read_minari(dataset_id, root=root, env_id=env_id and get_env_spec(env_id).id, **dims)
    return write_trajectories(out, episodes, env_id=env, behaviour_policy=f"imported from Minari dataset {dataset_id}",
                              seed=seed, metadata=meta)


# ---------------------------------------------------------------------------------------------------------
# human labels
# ---------------------------------------------------------------------------------------------------------

MAX_LINE_BYTES = 64 * 1024      # one label row; a longer one is refused, not parsed
MAX_TEXT_CHARS = 256            # query_id, annotator, timestamp
MAX_JSON_DEPTH = 8              # a label row is a flat object; nesting is refused before parsing


def _text(path: Path) -> str:
    """The file decoded as UTF-8 (a byte-order mark is dropped), or one line naming the first undecodable byte."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DatasetError(describe(f"{path}:{line}", "encoding", f"byte 0x{raw[exc.start]:02x} at offset {exc.start}",
                                    "UTF-8 text")) from None


def _json_depth_exceeds(line: str, limit: int) -> bool:
    """True where brackets nest deeper than ``limit`` (checked before ``json.loads``, which recurses)."""
    depth = 0
    in_string = escaped = False
    for ch in line:
        if in_string:
            escaped = not escaped and ch == "\\"
            if ch == '"' and not escaped:
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    text = _text(path)
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if len(line) > MAX_LINE_BYTES:
            raise DatasetError(describe(f"{path}:{n}", "row", f"{len(line):,} characters",
                                        f"at most {MAX_LINE_BYTES:,} per label row"))
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if _json_depth_exceeds(line, MAX_JSON_DEPTH):
                raise DatasetError(describe(f"{path}:{n}", "row", f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
                                            "one flat JSON object per line"))
            try:
                obj = json.loads(line)
            except ValueError as exc:  # JSONDecodeError, and integers over Python's digit limit
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).split(";")[0][:100]
                raise DatasetError(describe(f"{path}:{n}", "row", f"invalid JSON ({msg})", "one JSON object per line")) from None
            if not isinstance(obj, dict):
                raise DatasetError(describe(f"{path}:{n}", "row", type(obj).__name__, "a JSON object"))
            rows.append((n, obj))
        return rows
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        try:
            fieldnames = reader.fieldnames
            missing = [k for k in LABEL_FIELDS[:8] if k not in (fieldnames or [])]
            if missing:
                raise DatasetError(describe(f"{path}:1", "header", short_repr(fieldnames),
                                            f"columns including {list(LABEL_FIELDS[:8])}"))
            return [(reader.line_num, row) for row in reader]
        except csv.Error as exc:
            raise DatasetError(describe(f"{path}:{reader.line_num}", "row", f"unreadable CSV ({exc})",
                                        "comma-separated fields with a header row")) from None
    raise DatasetError(describe(str(path), "file type", repr(path.suffix), "'.jsonl' or '.csv'"))


def _int(value: Any, where: str, name: str, *, low: int = 0, high: int = 2**63 - 1) -> int:
    """An integer field in [low, high] (int64 storage), else one line naming the field."""
    try:
        if isinstance(value, bool) or value is None or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        if isinstance(value, str) and len(value.strip()) > 20:  # more digits than any int64 (and no slow parse)
            raise ValueError
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise DatasetError(describe(where, f"field '{name}'", short_repr(value), f"an integer from {low} to {high}")) from None
    if not low <= number <= high:
        raise DatasetError(describe(where, f"field '{name}'", short_repr(number), f"an integer from {low} to {high}"))
    return number


def _short_text(row: dict[str, Any], name: str, where: str) -> str:
    value = row.get(name)
    text = "" if value is None else str(value) if not isinstance(value, dict | list) else None
    if text is None or len(text) > MAX_TEXT_CHARS:
        got = f"{len(text):,} characters" if text is not None else type(value).__name__
        raise DatasetError(describe(where, f"field '{name}'", got, f"text of at most {MAX_TEXT_CHARS} characters"))
    return text


def control_characters(text: str) -> list[str]:
    """The control characters and line or paragraph separators in ``text`` (Unicode categories Cc, Zl, Zp), as
    ``repr`` shows them: a name holding one breaks every table and log line it is printed in."""
    return sorted({repr(ch)[1:-1] for ch in text if unicodedata.category(ch) in ("Cc", "Zl", "Zp")})


def _annotator(row: dict[str, Any], where: str) -> str:
    name = _short_text(row, "annotator", where)
    bad = control_characters(name)
    if bad:
        raise DatasetError(describe(where, "field 'annotator'", f"{short_repr(name)} (control character "
                                    f"{', '.join(bad)})", "a name without control characters or line breaks"))
    return name


def _timestamp(row: dict[str, Any], where: str) -> str:
    """The ``timestamp`` field: an ISO 8601 time, or empty when unknown."""
    stamp = _short_text(row, "timestamp", where)
    if stamp.strip():
        try:
            _dt.datetime.fromisoformat(stamp.strip())
        except ValueError:
            raise DatasetError(describe(where, "field 'timestamp'", short_repr(stamp), "an ISO 8601 time such as "
                                        "2024-05-01T12:00:00Z (or nothing, when unknown)")) from None
    return stamp


def _is_undo(row: dict[str, Any]) -> bool:
    undo = row.get("undo")
    return undo is True or (isinstance(undo, str) and undo.strip().lower() in ("true", "1", "yes"))


def without_self_pairs(records: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    """Leave out answers that compare a segment with itself (a tie that teaches nothing and counts as agreement
    by chance), with a warning naming their lines, as `pbrl data label` leaves out its own; all of them: one line."""
    same = [r for r in records if r["segs"][0] == r["segs"][1]]
    if not same:
        return records
    lines = ", ".join(str(r["line"]) for r in same[:10]) + (", ..." if len(same) > 10 else "")
    if len(same) == len(records):
        raise DatasetError(describe(f"{path}:{same[0]['line']}", "segments", "every answer's a and b are the same "
                                    "segment (they compare a segment with itself)", "pairs of two different segments"))
    print(f"pbrl: warning: {path}: left out {len(same)} of {len(records)} answers whose a and b are the same segment "
          f"(a pair of a segment with itself; line{'s' if len(same) > 1 else ''} {lines})", file=sys.stderr)
    return [r for r in records if r["segs"][0] != r["segs"][1]]


def import_labels(path: str | os.PathLike, trajectories: TrajectoryDataset) -> PreferenceDataset:
    """Read human labels (JSON Lines or CSV, see the module docstring) against ``trajectories``.

    Checks every row (fields, choice, segment inside its episode) before returning; the first bad row is
    named as ``file:line``: an annotator's name must hold no control characters, a timestamp must be ISO 8601
    (or empty). Answers comparing a segment with itself are left out with a warning (all of them: refused). One
    annotator answering the same pair of one query twice: the later answer wins,
    with a warning on stderr (two annotators' answers are both kept). An undo row
    (``{"query_id", "annotator", "undo": true}``, written by the annotation page) withdraws that annotator's
    last answer to that query.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(describe(str(path), "file", "missing", "a .jsonl or .csv file of labels"))
    lengths = trajectories.episode_lengths
    records: list[dict[str, Any] | None] = []         # in file order; None once withdrawn or replaced
    by_pair: dict[tuple, int] = {}                     # (query, annotator, pair) -> index into records
    by_query: dict[tuple[str, str], list[int]] = {}    # (query, annotator) -> indices, in answer order
    rows = _rows(path)
    if not rows:
        raise DatasetError(describe(str(path), "rows", 0, "at least one label"))
    for n, row in rows:
        where = f"{path}:{n}"
        if _is_undo(row):
            qid, who = _short_text(row, "query_id", where), _annotator(row, where)
            answered = [i for i in by_query.get((qid, who), []) if records[i] is not None]
            if not answered:
                raise DatasetError(describe(where, "undo", f"query {qid!r} by annotator {who!r}",
                                            "an earlier answer of this annotator to this query to withdraw"))
            records[answered[-1]] = None
            continue
        missing = [k for k in LABEL_FIELDS[:8] if row.get(k) in (None, "")]
        if missing:
            raise DatasetError(describe(where, f"field '{missing[0]}'", "missing", f"the fields {list(LABEL_FIELDS[:8])}"))
        segs = []
        for side in ("a", "b"):
            ep, start, length = (_int(row[f"{side}_{k}"], where, f"{side}_{k}") for k in ("episode", "start", "length"))
            if not 0 <= ep < len(lengths):
                raise DatasetError(describe(where, f"field '{side}_episode'", ep,
                                            f"an episode of {trajectories.path.name} (0 to {len(lengths) - 1})"))
            if start < 0 or length < 1 or start + length > lengths[ep]:
                raise DatasetError(describe(where, f"segment {side}", f"start {start} length {length} in episode {ep}",
                                            f"a segment inside the episode's {int(lengths[ep])} steps"))
            segs.append((ep, start, length))
        choice = row["choice"]
        if isinstance(choice, str) and choice.strip().lower() in (*_CHOICES, "skip"):
            c = choice.strip().lower()
            value, skip = (0.5, True) if c == "skip" else (_CHOICES[c], False)
        else:
            try:
                value, skip = float(choice), False
            except (TypeError, ValueError, OverflowError):
                value = float("nan")
            if isinstance(choice, bool) or not 0.0 <= value <= 1.0:
                raise DatasetError(describe(where, "field 'choice'", short_repr(choice),
                                            "'a', 'b', 'equal', 'skip' or a probability in [0, 1]"))
        g = _int(row.get("group") if row.get("group") not in (None, "") else 0, where, "group", high=2**31 - 1)
        qid, who, stamp = _short_text(row, "query_id", where), _annotator(row, where), _timestamp(row, where)
        key = (qid, who, tuple(sorted(segs)))  # one key for a pair shown either way round
        if key in by_pair and records[by_pair[key]] is not None:
            earlier = records[by_pair[key]]
            print(f"pbrl: warning: {where}: annotator {who!r} answered this pair of query {qid!r} before (line "
                  f"{earlier['line']}); the later answer wins", file=sys.stderr)
            records[by_pair[key]] = None
        by_pair[key] = len(records)
        by_query.setdefault((qid, who), []).append(len(records))
        records.append({"line": n, "segs": segs, "label": value, "skip": skip, "group": g, "query": qid,
                        "annotator": who, "timestamp": stamp})
    kept = without_self_pairs([r for r in records if r is not None], path)
    if not kept:
        raise DatasetError(describe(str(path), "labels", "none left after undo rows", "at least one label"))
    query_ids: dict[str, int] = {}
    return PreferenceDataset(np.array([r["segs"][0] for r in kept], np.int64),
                             np.array([r["segs"][1] for r in kept], np.int64),
                             np.array([r["label"] for r in kept], np.float32),
                             np.array([r["group"] for r in kept], np.int32),
                             skipped=np.array([r["skip"] for r in kept]),
                             query=np.array([query_ids.setdefault(r["query"], len(query_ids)) for r in kept], np.int64),
                             annotator=np.array([r["annotator"] for r in kept], dtype=object),
                             timestamp=np.array([r["timestamp"] for r in kept], dtype=object),
                             attrs={"source": str(path)})


def export_labels(prefs: PreferenceDataset, path: str | os.PathLike) -> Path:
    """Write labels as JSON Lines or CSV (by the file's suffix), atomically."""
    path = Path(path)
    if path.suffix not in (".jsonl", ".csv"):
        raise DatasetError(describe(str(path), "file type", repr(path.suffix), "'.jsonl' or '.csv'"))
    records = []
    for i in range(len(prefs)):
        lab = float(prefs.label[i])
        choice: Any = "skip" if prefs.skipped[i] else {1.0: "a", 0.0: "b", 0.5: "equal"}.get(lab, lab)
        a, b = prefs.segments_a[i], prefs.segments_b[i]
        records.append({"query_id": int(prefs.query[i]), "a_episode": int(a[0]), "a_start": int(a[1]),
                        "a_length": int(a[2]), "b_episode": int(b[0]), "b_start": int(b[1]), "b_length": int(b[2]),
                        "choice": choice, "annotator": str(prefs.annotator[i]), "group": int(prefs.group[i]),
                        "timestamp": str(prefs.timestamp[i])})
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in records)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=LABEL_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        text = buf.getvalue()
    return atomic_write_text(path, text)
