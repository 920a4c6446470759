"""Meta-World v3 frames rebuilt from stored 39-d observations (no simulator states needed).

An observation is ``hand xyz (3), gripper opening (1), object 1 pos (3) + quat (4), object 2 pos (3) + quat (4)``,
the same 18 numbers of the previous step, and the goal xyz (3; zeros when the task hides it). From it,
:class:`Reconstruction` sets a drawable state in three parts:

- **placement** (once per segment): the task's fixed bodies (the button's box, the drawer's cabinet, ...) are put
  where the task's own ``reset_model`` puts them for a reset vector (``_last_rand_vec``). That vector is chosen
  among the MT1 tasks' vectors and then refined by least squares so that the reset's goal (``_target_pos``)
  matches the observed goal and the objects of the first step can be matched by their joints.
- **hand** (each step): the mocap body, which the hand follows through a weld, is set and the arm settled by
  a few physics steps with contacts off, correcting the mocap target by the remaining hand error; the fingers
  are set so that their distance gives the observed opening.
- **objects** (each step): every joint outside the robot (free joints by position and rotation, slide and hinge
  joints by their value) is fitted by damped least squares so that the task's own ``_get_pos_objects`` and
  ``_get_quat_objects`` give the observed positions and quaternions.

The view is Meta-World's fixed ``corner2`` camera (the whole table and arm), turned half a turn about its axis:
under MuJoCo's renderer Meta-World's corner cameras show the world upside down, and a turn (not a flip) keeps
left and right as they are.

Approximate: the arm's pose is the one the weld settles into (the observation gives the hand, not the joints),
within about 2 mm of the observed hand; the hand is placed with contacts off, so it may overlap an object. What
cannot be placed stays where the task's reset put it: parts that no object joint moves and no reset-vector
entry explains (objects the observation leaves out, e.g. a wall), and, when the goal is hidden (zeros), the
reset-vector entries that only the goal would show. A reset vector that the task's reset rejects (it loops
drawing another) is scored as a miss.
"""

from __future__ import annotations

import pickle

import mujoco
import numpy as np

from pbrl.envs.gl import choose_gl, rendering_env
from pbrl.envs.registry import make_env
from pbrl.errors import ConfigError, DatasetError, describe

OBS_DIM = 39
#: Meta-World's fixed corner view of the table (one of the cameras its scene defines)
CAMERA = "corner2"
_HAND_QUAT = np.array([1.0, 0.0, 1.0, 0.0])  # the orientation Meta-World gives the mocap body at every step
_SETTLE_STEPS = 30
_SETTLE_ROUNDS = 12
_HAND_TOL = 2e-3
_QUAT_WEIGHT = 0.1  # a quaternion difference of 1 counts as 10 cm of position error


class _RandVecLoop(Exception):
    """The task's reset asked for more reset vectors than one (it rejects the vector and loops)."""


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(4)
    mujoco.mju_mulQuat(out, a, b)
    return out


def _rotvec_quat(v: np.ndarray) -> np.ndarray:
    out = np.empty(4)
    mujoco.mju_axisAngle2Quat(out, v / max(np.linalg.norm(v), 1e-12), np.linalg.norm(v))
    return out


def _solve(residual, x0: np.ndarray, *, iters: int = 30, eps: float = 1e-5, tol: float = 1e-5,
           lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on ``residual(x) -> r`` from ``x0`` [n] with finite-difference Jacobians, kept inside
    ``[lo, hi]``; returns ``(x, r)``."""
    x = np.clip(x0, lo, hi) if lo is not None else x0.copy()
    r = residual(x)
    damping = 1e-3
    for _ in range(iters):
        if np.linalg.norm(r) < tol:
            break
        jac = np.empty((len(r), len(x)))
        for k in range(len(x)):
            dx = np.zeros_like(x)
            # step away from a bound rather than across it
            dx[k] = -eps if hi is not None and x[k] + eps > hi[k] else eps
            jac[:, k] = (residual(x + dx) - r) / dx[k]
        jtj, jtr = jac.T @ jac, jac.T @ r
        improved = False
        while damping < 1e6:
            step = np.linalg.solve(jtj + damping * (np.diag(np.diag(jtj)) + 1e-9 * np.eye(len(x))), -jtr)
            cand = np.clip(x + step, lo, hi) if lo is not None else x + step
            r_cand = residual(cand)
            if np.linalg.norm(r_cand) < np.linalg.norm(r):
                x, r, damping, improved = cand, r_cand, max(damping / 10, 1e-9), True
                break
            damping *= 10
        if not improved or np.linalg.norm(step) < 1e-9:
            break
    return x, r


class Reconstruction:
    """A Meta-World task (MT1) rendered from ``[39]`` observations: :meth:`fit_task` once, then
    :meth:`place` and :meth:`render` per step. ``sim`` is the task's ``SawyerXYZEnv``; ``env``, when given, is an
    ``rgb_array`` env of the task at that size to use (and leave open) instead of a new one."""

    def __init__(self, env_id: str, size: int, *, camera: str = CAMERA, env=None) -> None:
        choose_gl()
        self._owns_env = env is None
        self.env = make_env(env_id, render_mode="rgb_array", render_size=size) if env is None else env
        self.env.reset(seed=0)
        self.sim = sim = self.env.unwrapped
        self.model, self.data = sim.model, sim.data
        m = self.model
        cam = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cam < 0:
            raise ConfigError(describe(env_id, "camera", repr(camera), "a camera of the Meta-World scene (corner, corner2, ...)"))
        self._upright(cam)
        sim.mujoco_renderer.camera_id = cam
        self.mocap = int(m.body_mocapid[m.body("mocap").id])
        robot_root = self._root_of(m.body("hand").id)
        robot = {b for b in range(m.nbody) if self._root_of(b) == robot_root}
        self.fingers = [m.joint(n).id for n in ("r_close", "l_close")]
        self.object_joints = [j for j in range(m.njnt) if m.jnt_bodyid[j] not in robot]
        self.object_qpos = np.concatenate([np.arange(m.jnt_qposadr[j], m.jnt_qposadr[j] + self._nq(j))
                                           for j in self.object_joints]).astype(int) if self.object_joints else np.zeros(0, int)
        self.n_objects = len(sim._get_pos_objects()) // 3
        self.hand_offset = np.zeros(3)  # mocap target minus hand position where the arm came to rest

    def _upright(self, cam: int) -> None:
        """Turn camera ``cam`` half a turn about its view axis if its image would show the world upside down
        (Meta-World's corner cameras do under MuJoCo's renderer); a turn, not a flip, so nothing is mirrored."""
        mujoco.mj_forward(self.model, self.data)
        image_up = self.data.cam_xmat[cam].reshape(3, 3)[:, 1]
        if image_up[2] < 0:
            self.model.cam_quat[cam] = _quat_mul(self.model.cam_quat[cam], np.array([0.0, 0.0, 0.0, 1.0]))

    def _root_of(self, body: int) -> int:
        while self.model.body_parentid[body] != 0:
            body = self.model.body_parentid[body]
        return body

    def _nq(self, joint: int) -> int:
        return {mujoco.mjtJoint.mjJNT_FREE: 7, mujoco.mjtJoint.mjJNT_BALL: 4}.get(self.model.jnt_type[joint], 1)

    def close(self) -> None:
        if self._owns_env:
            self.env.close()

    # -- objects -------------------------------------------------------------------------------------------

    def _object_params(self) -> np.ndarray:
        """Zero offsets [n] for the object joints from their current values (3 + 3 per free joint, 3 per ball
        joint, 1 per slide or hinge joint)."""
        n = sum({7: 6, 4: 3}.get(self._nq(j), 1) for j in self.object_joints)
        return np.zeros(n)

    def _set_objects(self, base: np.ndarray, params: np.ndarray) -> None:
        """Object joints at ``base`` (qpos [nq]) moved by offsets ``params`` [n]; forward kinematics."""
        qpos = base.copy()
        k = 0
        for j in self.object_joints:
            adr = self.model.jnt_qposadr[j]
            nq = self._nq(j)
            if nq == 7:
                qpos[adr: adr + 3] += params[k: k + 3]
                qpos[adr + 3: adr + 7] = _quat_mul(_rotvec_quat(params[k + 3: k + 6]), base[adr + 3: adr + 7])
                k += 6
            elif nq == 4:
                qpos[adr: adr + 4] = _quat_mul(_rotvec_quat(params[k: k + 3]), base[adr: adr + 4])
                k += 3
            else:
                qpos[adr] += params[k]  # no clipping to the joint's range: a hard push goes past it, as observed
                k += 1
        self.data.qpos[self.object_qpos] = qpos[self.object_qpos]
        mujoco.mj_forward(self.model, self.data)

    def _object_residual(self, obs: np.ndarray) -> np.ndarray:
        """Observed minus placed object positions and (sign-aligned, weighted) quaternions [7 * n_objects]."""
        pos = np.asarray(self.sim._get_pos_objects(), dtype=np.float64)
        quat = np.asarray(self.sim._get_quat_objects(), dtype=np.float64)
        out = []
        for i in range(self.n_objects):
            seen = obs[4 + 7 * i: 11 + 7 * i]
            q = quat[4 * i: 4 * i + 4]
            if np.dot(q, seen[3:]) < 0:
                q = -q
            out += [seen[:3] - pos[3 * i: 3 * i + 3], _QUAT_WEIGHT * (seen[3:] - q)]
        return np.concatenate(out) if out else np.zeros(0)

    def place_objects(self, obs: np.ndarray) -> np.ndarray:
        """Fit the object joints to ``obs`` [39]; returns the remaining residual [7 * n_objects]."""
        if not self.object_joints:
            return self._object_residual(obs)
        base = self.data.qpos.copy()

        def residual(params: np.ndarray) -> np.ndarray:
            self._set_objects(base, params)
            return self._object_residual(obs)

        x, r = _solve(residual, self._object_params())
        self._set_objects(base, x)
        self.data.qvel[:] = 0.0
        return r

    # -- the task's placement ------------------------------------------------------------------------------

    def _reset_with(self, vec: np.ndarray) -> None:
        """The task's own ``reset_model`` with reset vector ``vec``; :class:`_RandVecLoop` if it rejects it."""
        sim, calls = self.sim, [0]

        def draw() -> np.ndarray:
            calls[0] += 1
            if calls[0] > 4:
                raise _RandVecLoop
            return vec.copy()

        sim._get_state_rand_vec = draw
        try:
            sim._last_rand_vec = vec.copy()
            mujoco.mj_resetData(self.model, self.data)  # as gymnasium's reset does: the result owes nothing to history
            sim.reset_model()
        finally:
            del sim._get_state_rand_vec

    def _task_residual(self, vec: np.ndarray, first: np.ndarray, goal_seen: bool) -> np.ndarray:
        try:
            self._reset_with(vec)
        except _RandVecLoop:
            return np.full(3 + 7 * self.n_objects, 10.0)
        goal = first[36:39] - np.asarray(self.sim._target_pos, dtype=np.float64) if goal_seen else np.zeros(3)
        return np.concatenate([goal, self.place_objects(first)])

    def _candidate_vectors(self) -> list[np.ndarray]:
        """The current reset vector and those of the MT1 tasks the env was made with."""
        out = [np.asarray(self.sim._last_rand_vec, dtype=np.float64)]
        try:
            tasks = self.env.get_wrapper_attr("tasks")
        except AttributeError:
            tasks = []
        for task in tasks:
            out.append(np.asarray(pickle.loads(task.data)["rand_vec"], dtype=np.float64))
        return out

    def fit_task(self, observations: np.ndarray) -> float:
        """Place the task's fixed bodies for a segment (``observations`` [T, 39]); returns the remaining error
        (m) of the goal and the first step's objects."""
        first = observations[0]
        goal_seen = bool(np.any(first[36:39] != 0))
        space = self.sim._random_reset_space
        scored = [(np.linalg.norm(self._task_residual(v, first, goal_seen)), i, v)
                  for i, v in enumerate(self._candidate_vectors())]
        _, _, best = min(scored, key=lambda s: (s[0], s[1]))
        lo = hi = None
        if space is not None:
            lo, hi = np.minimum(space.low, best), np.maximum(space.high, best)
        vec, r = _solve(lambda v: self._task_residual(v, first, goal_seen), best, iters=10, eps=1e-4, tol=1e-4,
                        lo=lo, hi=hi)
        self._reset_with(vec)
        if goal_seen:
            self.sim._target_pos = first[36:39].copy()
        self.hand_offset = self.data.mocap_pos[self.mocap] - self.sim.get_endeff_pos()
        return float(np.linalg.norm(r))

    # -- the hand ------------------------------------------------------------------------------------------

    def place_hand(self, hand: np.ndarray, opening: float) -> float:
        """Settle the arm with the hand at ``hand`` [3] and the fingers ``opening`` apart (fraction of 10 cm);
        returns the remaining hand error (m). Object joints are kept as they were."""
        m, d = self.model, self.data
        kept = d.qpos[self.object_qpos].copy()
        flags = m.opt.disableflags
        m.opt.disableflags = flags | int(mujoco.mjtDisableBit.mjDSBL_CONTACT)
        try:
            target = hand + self.hand_offset
            for _ in range(_SETTLE_ROUNDS):
                d.mocap_pos[self.mocap] = target
                d.mocap_quat[self.mocap] = _HAND_QUAT
                for _ in range(_SETTLE_STEPS):
                    mujoco.mj_step(m, d)
                error = hand - self.sim.get_endeff_pos()
                if np.linalg.norm(error) < _HAND_TOL:
                    break
                target = target + error
        finally:
            m.opt.disableflags = flags
        self.hand_offset = target - hand
        d.qpos[self.object_qpos] = kept
        self._set_fingers(opening)
        d.qvel[:] = 0.0
        mujoco.mj_forward(m, d)
        return float(np.linalg.norm(hand - self.sim.get_endeff_pos()))

    def _finger_gap(self) -> float:
        return float(np.linalg.norm(self.data.body("rightclaw").xpos - self.data.body("leftclaw").xpos)) / 0.1

    def _set_fingers(self, opening: float) -> None:
        """Close both fingers by the same fraction of their range until the gap is ``opening`` (bisection)."""
        m, d = self.model, self.data
        right, left = self.fingers
        adr_r, adr_l = m.jnt_qposadr[right], m.jnt_qposadr[left]
        open_r, shut_r = 0.0, m.jnt_range[right][1]  # the right finger closes towards +, the left towards -
        open_l, shut_l = 0.0, m.jnt_range[left][0]

        def gap(c: float) -> float:
            d.qpos[adr_r], d.qpos[adr_l] = open_r + c * (shut_r - open_r), open_l + c * (shut_l - open_l)
            mujoco.mj_kinematics(m, d)
            return self._finger_gap()

        a, b = 0.0, 2.0  # past the joint range too: a hard grip squeezes the fingers beyond it, as observed
        for _ in range(30):
            mid = (a + b) / 2
            a, b = (mid, b) if gap(mid) > opening else (a, mid)
        gap((a + b) / 2)
        for joint, adr in ((right, adr_r), (left, adr_l)):  # position servos hold the fingers while the arm settles
            d.ctrl[m.actuator_trnid[:, 0] == joint] = d.qpos[adr]

    # -- a step --------------------------------------------------------------------------------------------

    def place(self, obs: np.ndarray) -> dict[str, float]:
        """Set the hand, fingers and objects from ``obs`` [39]; returns the errors (hand and objects, m)."""
        obs = np.asarray(obs, dtype=np.float64)
        hand_error = self.place_hand(obs[:3], float(obs[3]))
        objects = self.place_objects(obs)
        return {"hand": hand_error, "objects": float(np.linalg.norm(objects))}

    def render(self) -> np.ndarray:
        """``[size, size, 3]`` uint8 of the current state, the goal marker at the task's goal."""
        for name, pos in self.sim._target_site_config:
            self.sim._set_pos_site(name, np.asarray(pos, dtype=np.float64))
        return np.asarray(self.sim.render(), dtype=np.uint8)


def frames(env_id: str, observations: np.ndarray, size: int) -> np.ndarray:
    """``[T, size, size, 3]`` uint8 frames of Meta-World task ``env_id`` set to each of ``observations`` [T, 39],
    seen from the fixed :data:`CAMERA` (the env is :func:`pbrl.envs.gl.rendering_env`'s, kept for the next segment)."""
    observations = np.asarray(observations, dtype=np.float64)
    if observations.ndim != 2 or observations.shape[1] != OBS_DIM or len(observations) == 0:
        raise DatasetError(describe(env_id, "observations", observations.shape, f"[T, {OBS_DIM}] Meta-World observations"))
    scene = Reconstruction(env_id, size, env=rendering_env(env_id, size))
    scene.fit_task(observations)
    out = []
    for obs in observations:
        scene.place(obs)
        out.append(scene.render())
    return np.stack(out)
