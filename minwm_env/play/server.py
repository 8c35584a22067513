"""``minwm-play``: a local web app that streams a world model into the browser.

One websocket connection is one world: its own ``WorldModelEnv`` (the loaded model's weights
are shared, the KV cache is not) and, for the side-by-side view, its own ground-truth env
stepped with the same actions from the same start. Model steps run in a thread pool so the
event loop keeps serving the other pages; MuJoCo's OpenGL contexts stay on one thread of their
own (a context is current on one thread at a time).

Protocol (JSON text messages, binary frames):

- client → server: ``{"type": "step", "keys": ["w", "l"]}`` (minWM's keys, held for one
  chunk; a step that arrives while one is running replaces the waiting one, so a fast sender
  never builds a queue), ``{"type": "reset"}``, ``{"type": "new_scene"}``,
  ``{"type": "truth", "on": true}``, ``{"type": "record", "on": true}``; a binary message is a
  start image to upload (PNG or JPEG bytes).
- server → client: ``hello``, ``start`` / ``chunk`` headers (pose, latency, frame count)
  each followed by their frames as binary messages ``[kind, index, image bytes...]`` (kind 1:
  the model, 2: the ground truth), ``recording`` (then one binary ``[3, 0, mp4 bytes...]``),
  ``error`` (``fatal``: the server closes the connection after it).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import math
import os
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..pose_strings import KEY_DELTAS

log = logging.getLogger("minwm.play")
STATIC = Path(__file__).parent / "static"
KIND_MODEL, KIND_TRUTH, KIND_VIDEO = 1, 2, 3
MOVE_KEYS = ("w", "s", "a", "d", "u", "dn", "l", "j", "i", "k")
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_CONTROLS = 8  # queued non-step requests per connection
RECORD_SCALE = 4  # recorded video is the frames scaled up (nearest), 64 → 256 pixels
PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


@dataclass
class PlayConfig:
    model: str = "minwm-default"
    max_clients: int = 4
    idle_timeout: float = 300.0
    image_format: str = "png"  # or "jpeg"
    jpeg_quality: int = 90
    start_scene: str = "room"
    max_record_frames: int = 16 * 600  # ten minutes at 16 frames/s; recording stops there
    num_threads: int | None = None


class ClientError(ValueError):
    """A bad request from one page: reported to that page, the connection stays open."""


def keys_action(keys, spec_low: np.ndarray, spec_high: np.ndarray) -> np.ndarray:
    """The camera delta for a set of held minWM keys: the sum of their deltas, clipped to the
    action space (opposite keys cancel)."""
    if not isinstance(keys, list) or len(keys) > len(MOVE_KEYS):
        raise ClientError(f"'keys' must be a list of at most {len(MOVE_KEYS)} key names, got {keys!r}")
    action = np.zeros(6, np.float64)
    for key in set(keys):
        if key not in MOVE_KEYS and key != "stay":
            raise ClientError(f"unknown key {key!r}; keys: {list(MOVE_KEYS)}")
        action += KEY_DELTAS[key]
    return np.clip(action, spec_low, spec_high).astype(np.float32)


def pose_summary(c2w: np.ndarray) -> dict:
    """Position and heading of a 4×4 c2w (OpenCV axes): yaw + right, pitch + up, degrees."""
    c2w = np.asarray(c2w, dtype=np.float64)
    forward = c2w[:3, 2]
    yaw = math.degrees(math.atan2(forward[0], forward[2]))
    pitch = math.degrees(math.atan2(-forward[1], math.hypot(forward[0], forward[2])))
    x, y, z = c2w[:3, 3]
    return {"x": round(float(x), 3) + 0.0, "y": round(float(y), 3) + 0.0, "z": round(float(z), 3) + 0.0,
            "yaw": round(yaw, 2) + 0.0, "pitch": round(pitch, 2) + 0.0}


def decode_upload(data: bytes, height: int, width: int) -> np.ndarray:
    """A PNG or JPEG upload as uint8 RGB (height, width, 3), resized to the model's size."""
    import cv2

    if len(data) > MAX_UPLOAD_BYTES:
        raise ClientError(f"upload is {len(data)} bytes; the limit is {MAX_UPLOAD_BYTES} bytes")
    if not (data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC)):
        raise ClientError("upload is not a PNG or JPEG image (its first bytes are neither PNG's nor JPEG's signature)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3 or min(image.shape[:2]) < 1:
        raise ClientError("upload could not be decoded as an image (a truncated or damaged PNG/JPEG file?)")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    interpolation = cv2.INTER_AREA if image.shape[0] > height or image.shape[1] > width else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(image, (width, height), interpolation=interpolation))


def encode_frame(frame: np.ndarray, image_format: str, quality: int) -> bytes:
    import cv2

    bgr = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
    if image_format == "jpeg":
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    else:
        ok, data = cv2.imencode(".png", bgr)
    if not ok:
        raise RuntimeError("frame encoding failed")
    return data.tobytes()


class Recorder:
    """Frames shown to one page, written to an mp4 as they come (memory stays flat)."""

    def __init__(self, height: int, width: int, with_truth: bool, fps: int):
        import imageio

        self.height, self.width, self.with_truth = height, width, with_truth
        handle, self.path = tempfile.mkstemp(prefix="minwm-play-", suffix=".mp4")
        os.close(handle)
        self.writer = imageio.get_writer(self.path, fps=fps, codec="libx264", quality=8, macro_block_size=16,
                                         ffmpeg_log_level="error")
        self.frames = 0

    def add(self, model: np.ndarray, truth: np.ndarray | None) -> None:
        frame = model
        if self.with_truth:
            right = truth if truth is not None else np.full_like(model, 64)
            frame = np.concatenate([model, right], axis=1)
        frame = frame.repeat(RECORD_SCALE, axis=0).repeat(RECORD_SCALE, axis=1)
        self.writer.append_data(frame)
        self.frames += 1

    def finish(self) -> bytes:
        self.writer.close()
        try:
            return Path(self.path).read_bytes()
        finally:
            self.discard()

    def discard(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass
        Path(self.path).unlink(missing_ok=True)


class Session:
    """One connection's world: the model env, the ground truth beside it, the recording."""

    def __init__(self, server: "PlayServer", ws):
        self.server, self.ws = server, ws
        self.id = next(server.ids)
        self.world = None
        self.truth = None
        self.truth_layout = None
        self.layout, self.start_seed = 0, 0
        self.truth_available, self.show_truth = False, False
        self.uploaded: np.ndarray | None = None  # the start image the page uploaded, if any
        self.steps = 0
        self.recorder: Recorder | None = None
        self.pending_keys = None
        self.controls: deque = deque()
        self.wake = asyncio.Event()
        self.last_input = time.monotonic()

    # -- blocking work (runs in the pools) ----------------------------------------------------
    def _make_world(self):
        from ..envs.world_model import WorldModelEnv

        self.world = WorldModelEnv(model=self.server.model, start_scene=self.server.config.start_scene,
                                   num_threads=self.server.config.num_threads)
        names = tuple(self.world._world.spec.names)
        from ..camera import DELTA_NAMES
        if names != tuple(DELTA_NAMES):
            raise RuntimeError(f"minwm-play steers camera deltas {tuple(DELTA_NAMES)}; this model takes {names}")
        space = self.world.action_space
        self.low = np.broadcast_to(np.asarray(space.low, np.float64).reshape(-1, 6)[0], (6,))
        self.high = np.broadcast_to(np.asarray(space.high, np.float64).reshape(-1, 6)[0], (6,))

    def _truth_start(self, layout: int, seed: int):
        """On the truth thread: (start image, its world pose) of layout ``layout``."""
        from ..envs.ground_truth import GroundTruthEnv

        if self.truth is None or self.truth_layout != layout:
            if self.truth is not None:
                self.truth.close()
            self.truth = GroundTruthEnv(scene=self.server.config.start_scene, scene_seed=layout,
                                        width=self.server.width, height=self.server.height, obs_mode="chunk")
            self.truth_layout = layout
        obs, info = self.truth.reset(seed=seed)
        return obs[-1], info["world_pose"]

    def _world_reset(self, image: np.ndarray, seed: int):
        self.world.reset(seed=seed, options={"image": image})

    def _world_step(self, action: np.ndarray):
        _, _, _, _, info = self.world.step(action)
        return info

    def _truth_step(self, action: np.ndarray):
        _, _, _, _, info = self.truth.step(action)
        return info["frames"]

    def _close_truth(self):
        if self.truth is not None:
            self.truth.close()
            self.truth = None

    def _encode(self, frames: np.ndarray) -> list[bytes]:
        config = self.server.config
        return [encode_frame(f, config.image_format, config.jpeg_quality) for f in frames]

    # -- async orchestration ------------------------------------------------------------------
    async def model_call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.server.model_pool, fn, *args)

    async def truth_call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.server.truth_pool, fn, *args)

    async def send(self, message: dict) -> None:
        if not self.ws.closed:
            await self.ws.send_str(json.dumps(message))

    async def send_frames(self, kind: int, encoded: list[bytes]) -> None:
        for index, data in enumerate(encoded):
            if self.ws.closed:
                return
            await self.ws.send_bytes(bytes((kind, index % 256)) + data)

    async def error(self, message: str, fatal: bool = False) -> None:
        await self.send({"type": "error", "message": message, "fatal": fatal})

    async def start(self, reason: str, image: np.ndarray | None = None) -> None:
        """(Re)start the world: from the truth's start view of ``self.layout``, or from ``image``."""
        if image is None:
            image, _ = await self.truth_call(self._truth_start, self.layout, self.start_seed)
            self.truth_available = True
        else:
            self.truth_available = False
            await self.truth_call(self._close_truth)
        await self.model_call(self._world_reset, image, self.start_seed)
        self.steps = 0
        if self.recorder is not None:
            await self.model_call(self.recorder.add, image, image if self.truth_available else None)
        encoded = await self.model_call(self._encode, image[None])
        await self.send({"type": "start", "reason": reason, "layout": self.layout,
                         "truth_available": self.truth_available, "show_truth": self.show_truth,
                         "pose": pose_summary(np.eye(4)), "frames": 1})
        await self.send_frames(KIND_MODEL, encoded)
        if self.truth_available and self.show_truth:
            await self.send_frames(KIND_TRUTH, encoded)

    async def step(self, keys) -> None:
        action = keys_action(keys, self.low, self.high)
        began = time.perf_counter()
        work = [self.model_call(self._world_step, action)]
        if self.truth_available:
            work.append(self.truth_call(self._truth_step, action))  # stepped always: stays in sync
        results = await asyncio.gather(*work)
        info = results[0]
        truth_frames = results[1] if self.truth_available else None
        latency = time.perf_counter() - began
        frames = info["frames"]
        show = self.show_truth and truth_frames is not None
        encoded = await self.model_call(self._encode, frames)
        encoded_truth = await self.model_call(self._encode, truth_frames) if show else None
        if self.recorder is not None:
            await self.model_call(self._record, frames, truth_frames if show else None)
        self.steps += 1
        await self.send({"type": "chunk", "step": self.steps, "keys": sorted(set(keys)), "frames": len(frames),
                         "latency_ms": round(latency * 1000, 1), "model_ms": round(float(info["latency_s"]) * 1000, 1),
                         "pose": pose_summary(info["pose"]), "truth": show})
        await self.send_frames(KIND_MODEL, encoded)
        if show:
            await self.send_frames(KIND_TRUTH, encoded_truth)
        if self.recorder is not None and self.recorder.frames >= self.server.config.max_record_frames:
            await self.stop_recording(note=f"recording stopped at its limit of {self.server.config.max_record_frames} frames")

    def _record(self, frames, truth_frames):
        for i, frame in enumerate(frames):
            self.recorder.add(frame, None if truth_frames is None else truth_frames[i])

    async def stop_recording(self, note: str = "") -> None:
        recorder, self.recorder = self.recorder, None
        if recorder is None:
            return
        data = await self.model_call(recorder.finish)
        await self.send({"type": "recording", "on": False, "frames": recorder.frames, "bytes": len(data), "note": note})
        if not self.ws.closed:
            await self.ws.send_bytes(bytes((KIND_VIDEO, 0)) + data)

    async def control(self, message) -> None:
        kind = message.get("type") if isinstance(message, dict) else "upload"
        if kind == "upload":
            image = await self.model_call(decode_upload, message, self.server.height, self.server.width)
            self.uploaded = image
            await self.start("upload", image)
        elif kind == "reset":
            await self.start("reset", self.uploaded)  # back to this episode's start, uploaded or rendered
        elif kind == "new_scene":
            self.uploaded = None
            self.layout += 1
            self.start_seed += 1
            await self.start("new_scene")
        elif kind == "truth":
            on = message.get("on")
            if not isinstance(on, bool):
                raise ClientError(f"'truth' needs \"on\": true or false, got {on!r}")
            self.show_truth = on
            await self.send({"type": "truth", "on": on, "available": self.truth_available})
        elif kind == "record":
            on = message.get("on")
            if not isinstance(on, bool):
                raise ClientError(f"'record' needs \"on\": true or false, got {on!r}")
            if on and self.recorder is None:
                self.recorder = await self.model_call(Recorder, self.server.height, self.server.width,
                                                      self.show_truth and self.truth_available, self.server.fps)
                await self.send({"type": "recording", "on": True, "frames": 0})
            elif not on:
                await self.stop_recording()

    async def worker(self) -> None:
        """Runs this world's requests one at a time: controls in order, then the latest step."""
        while not self.ws.closed:
            await self.wake.wait()
            self.wake.clear()
            while self.controls or self.pending_keys is not None:
                try:
                    if self.controls:
                        await self.control(self.controls.popleft())
                    else:
                        keys, self.pending_keys = self.pending_keys, None
                        await self.step(keys)
                except ClientError as err:
                    await self.error(str(err))
                except Exception as err:  # a failure in this world must not take the server down
                    log.exception("session %d: request failed", self.id)
                    await self.error(f"the server could not do that: {type(err).__name__}: {err}")

    def receive(self, msg) -> None:
        """Parse one incoming message (raises ClientError for a malformed one)."""
        import aiohttp

        self.last_input = time.monotonic()
        if msg.type == aiohttp.WSMsgType.BINARY:
            self._queue_control(bytes(msg.data))
            return
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ClientError(f"unexpected websocket message of type {msg.type.name}")
        try:
            message = json.loads(msg.data)
        except ValueError:
            raise ClientError(f"message is not JSON: {msg.data[:80]!r}") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ClientError(f"message must be a JSON object with a string 'type', got {msg.data[:80]!r}")
        kind = message["type"]
        if kind == "step":
            keys = message.get("keys", [])
            keys_action(keys, self.low, self.high)  # check now, so the error names this message
            self.pending_keys = keys
            self.wake.set()
        elif kind in ("reset", "new_scene", "truth", "record"):
            self._queue_control(message)
        else:
            raise ClientError(f"unknown message type {kind!r}; types: step, reset, new_scene, truth, record "
                              "(and a binary message to upload a start image)")

    def _queue_control(self, message) -> None:
        if len(self.controls) >= MAX_CONTROLS:
            raise ClientError(f"too many requests waiting ({MAX_CONTROLS}); wait for the world to catch up")
        self.controls.append(message)
        self.wake.set()

    async def watchdog(self) -> None:
        timeout = self.server.config.idle_timeout
        while not self.ws.closed:
            await asyncio.sleep(min(1.0, timeout / 4))
            if time.monotonic() - self.last_input > timeout:
                await self.error(f"closed after {timeout:g} s without input; reload the page to play again",
                                 fatal=True)
                await self.ws.close(code=1000, message=b"idle timeout")
                return

    async def close(self) -> None:
        if self.recorder is not None:
            self.recorder.discard()
            self.recorder = None
        await self.truth_call(self._close_truth)
        if self.world is not None:
            world, self.world = self.world, None
            await self.model_call(world.close)


class PlayServer:
    def __init__(self, config: PlayConfig, model=None):
        from ..envs.world_model import resolve_model

        if config.max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, got {config.max_clients}")
        if config.idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive, got {config.idle_timeout}")
        if config.image_format not in ("png", "jpeg"):
            raise ValueError(f"image_format must be 'png' or 'jpeg', got {config.image_format!r}")
        self.config = config
        self.model = model if model is not None else resolve_model(config.model, "cpu", "float32")
        settings = self.model.settings
        self.height, self.width = settings.height, settings.width
        self.fps = 16
        self.model_pool = ThreadPoolExecutor(max_workers=config.max_clients, thread_name_prefix="minwm-play-model")
        self.truth_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minwm-play-truth")
        self.sessions: dict[int, Session] = {}
        self.ids = itertools.count(1)
        self._cleanups: set = set()

    def app(self):
        from aiohttp import web

        app = web.Application(client_max_size=MAX_UPLOAD_BYTES + 1024)
        app.router.add_get("/", self.index)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/status", self.status)
        app.router.add_static("/static/", STATIC)
        app.on_shutdown.append(self._shutdown)
        app.on_cleanup.append(self._cleanup)
        return app

    async def index(self, request):
        from aiohttp import web

        return web.FileResponse(STATIC / "index.html")

    async def status(self, request):
        from aiohttp import web

        return web.json_response({"clients": len(self.sessions), "max_clients": self.config.max_clients,
                                  "model": str(self.config.model)})

    async def websocket(self, request):
        from aiohttp import web, WSMsgType

        ws = web.WebSocketResponse(max_msg_size=MAX_UPLOAD_BYTES + 1024, heartbeat=30)
        await ws.prepare(request)
        if len(self.sessions) >= self.config.max_clients:
            await ws.send_str(json.dumps({
                "type": "error", "fatal": True,
                "message": f"the server is full: {len(self.sessions)} of {self.config.max_clients} worlds are in use. "
                           "Close another tab, or start minwm-play with a larger --max-clients."}))
            await ws.close(code=1013, message=b"server full")
            return ws
        session = Session(self, ws)
        self.sessions[session.id] = session
        tasks = []
        try:
            await session.model_call(session._make_world)
            await session.send({"type": "hello", "session": session.id, "width": self.width, "height": self.height,
                                "fps": self.fps, "format": self.config.image_format, "model": str(self.config.model),
                                "keys": list(MOVE_KEYS), "idle_timeout": self.config.idle_timeout,
                                "clients": len(self.sessions), "max_clients": self.config.max_clients})
            await session.start("connect")
            tasks = [asyncio.create_task(session.worker()), asyncio.create_task(session.watchdog())]
            async for msg in ws:
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                try:
                    session.receive(msg)
                except ClientError as err:
                    await session.error(str(err))
        except ConnectionResetError:
            pass
        except Exception as err:  # this world could not start: tell its page, keep serving the others
            log.exception("session %d failed", session.id)
            if not ws.closed:
                await session.error(f"this world could not start: {type(err).__name__}: {err}", fatal=True)
        finally:
            # The world is freed even when aiohttp cancels this handler as the peer goes away:
            # the session leaves the table now, and its clean-up runs shielded from that cancel.
            self.sessions.pop(session.id, None)
            for task in tasks:
                task.cancel()
            cleanup = asyncio.create_task(self._release(session, ws, tasks))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            await asyncio.shield(cleanup)
        return ws

    async def _release(self, session: Session, ws, tasks) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await session.close()
        except Exception:
            log.exception("session %d: closing its world failed", session.id)
        if not ws.closed:
            await ws.close()
        log.debug("session %d: released", session.id)

    async def _shutdown(self, app):
        for session in list(self.sessions.values()):
            await session.ws.close(code=1001, message=b"server shutting down")

    async def _cleanup(self, app):
        await asyncio.gather(*list(self._cleanups), return_exceptions=True)  # worlds closed on their threads
        self.model_pool.shutdown(wait=False, cancel_futures=True)
        self.truth_pool.shutdown(wait=False, cancel_futures=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minwm-play", description="Play a minwm world model in the browser "
                                     "(keyboard control, ground truth side by side, recording).")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--model", default="minwm-default",
                        help="the shipped model (minwm-default), a preset name (tiny) or a model folder")
    parser.add_argument("--max-clients", type=int, default=4, help="worlds at once, one per tab (default 4)")
    parser.add_argument("--idle-timeout", type=float, default=300.0,
                        help="close a connection after this many seconds without input (default 300)")
    parser.add_argument("--format", dest="image_format", choices=("png", "jpeg"), default="png",
                        help="frame encoding on the wire (default png: lossless)")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--scene", dest="start_scene", default="room", help="ground-truth scene for start views")
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads (default: the package's choice)")
    return parser


async def serve(config: PlayConfig, host: str, port: int, model=None, ready=None):
    """Run the app until cancelled; ``ready(url)`` is called once it listens."""
    from aiohttp import web

    server = PlayServer(config, model)
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{bound[1]}/"
    if ready is not None:
        ready(url)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv=None) -> int:
    from ..threads import configure_process

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    configure_process(args.num_threads)
    config = PlayConfig(model=args.model, max_clients=args.max_clients, idle_timeout=args.idle_timeout,
                        image_format=args.image_format, jpeg_quality=args.jpeg_quality, start_scene=args.start_scene,
                        num_threads=args.num_threads)
    try:
        asyncio.run(serve(config, args.host, args.port, ready=lambda url: print(f"minwm-play: open {url}", flush=True)))
    except KeyboardInterrupt:
        pass
    return 0
