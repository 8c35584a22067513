"""The renderer's depth and labels: what evaluation measures seen/new content and object size with."""

import numpy as np
import pytest

from minwm_env.world.renderer import LABELS, WorldRenderer, look_pose
from minwm_env.world.scenes import make_scene


@pytest.fixture(scope="module")
def room():
    renderer = WorldRenderer(make_scene("room", 100), 64, 64)
    yield renderer
    renderer.close()


def test_depth_is_the_distance_along_the_camera_axis(room):
    pose = look_pose(0, 0, 0.5, 30, 0)
    depth = room.render_depth(pose)
    fy = room.intrinsics[1] * 64
    classes, _ = room.render_labels(pose)
    rows = [r for r in range(40, 64) if classes[r, 32] == LABELS.index("floor")]
    assert len(rows) > 10
    for r in rows:  # a floor pixel's ray meets the plane z = 0, 0.5 below the camera
        assert depth[r, 32] == pytest.approx(0.5 / ((r + 0.5 - 32) / fy), rel=1e-4)
    assert np.isinf(depth[classes == LABELS.index("sky")]).all() and np.isfinite(depth[classes != 0]).all()


def test_labels_name_what_each_pixel_shows_and_leave_rgb_alone(room):
    pose = look_pose(0, 0, 0.5, 30, 0)
    before = room.render(pose)
    classes, geom = room.render_labels(pose)
    names = {LABELS[k] for k in np.unique(classes)}
    assert {"sky", "floor", "wall"} <= names and names & {"box", "sphere", "cylinder"}
    assert (classes[:20] != LABELS.index("floor")).all() and (classes[-3:, 20:] == LABELS.index("floor")).all()
    assert ((geom < 0) == (classes == LABELS.index("sky"))).all()
    assert np.array_equal(room.render(pose), before)
    # looking straight down shows the floor only
    down = look_pose(0, 0, 0.5, 30, -89)
    assert (room.render_labels(down)[0] == LABELS.index("floor")).all()


def test_scene_renderers_build_each_layout_once_and_stay_bounded():
    from minwm_env.world.renderer import SceneRenderers

    renderers = SceneRenderers(size=16, capacity=2)
    scene, renderer = renderers("room", 3)
    assert renderers("room", 3)[1] is renderer and scene.name == make_scene("room", 3).name
    pose = look_pose(0.0, 0.0, 1.0, 30.0)
    np.testing.assert_array_equal(renderer.render(pose), WorldRenderer(make_scene("room", 3), 16, 16).render(pose))
    renderers("gallery", 3)
    renderers("room", 4)  # a third layout: the cache starts afresh
    assert renderers("room", 3)[1] is not renderer
    with pytest.raises(ValueError, match="capacity"):
        SceneRenderers(capacity=0)
