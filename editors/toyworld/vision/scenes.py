"""The toy world's pictures: coloured shapes on a grid, and the questions asked about them.

A picture is ``IMAGE_SIZE`` pixels square, cut into a ``GRID`` × ``GRID`` grid of cells; each
object fills one cell. The vision encoder reads ``PATCH`` pixel patches, so a cell is
``CELL // PATCH`` patches on a side and every object covers a known set of image tokens
(:func:`object_patches`): the ground truth that the image-token findings (Neo et al. 2025) are
measured against. A scene holds one to three objects, with distinct shapes and distinct colours,
so "what colour is the circle" and "what shape is red" each have one answer. A question ends
with the word it asks about, and its answer is the next word.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow")
RGB = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 235), "yellow": (235, 210, 40)}
IMAGE_SIZE, GRID, PATCH = 32, 4, 8
CELL = IMAGE_SIZE // GRID
PATCH_GRID = IMAGE_SIZE // PATCH  # image tokens per row and per column
QUESTION_KINDS = ("colour_of", "shape_of", "is_there")
BACKGROUND, NOISE = 28, 12


@dataclass(frozen=True)
class Thing:
    """One object: its shape, its colour and its grid cell."""

    shape: str
    colour: str
    row: int
    column: int


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    seed: int  # the background noise's

    def thing(self, shape: str) -> Thing | None:
        return next((t for t in self.things if t.shape == shape), None)


@dataclass(frozen=True)
class Question:
    """A question about a scene, its one-word answer, its kind and the object it is about."""

    text: str
    answer: str
    kind: str
    about: Thing | None


def random_scene(rng: random.Random, max_things: int = 3) -> Scene:
    count = rng.randint(1, max_things)
    shapes, colours = rng.sample(SHAPES, count), rng.sample(COLOURS, count)
    cells = rng.sample(range(GRID * GRID), count)
    things = tuple(Thing(s, c, cell // GRID, cell % GRID) for s, c, cell in zip(shapes, colours, cells, strict=True))
    return Scene(things, rng.randrange(1 << 30))


def _mask(shape: str) -> np.ndarray:
    """The shape's pixels within one cell (a 6-pixel figure centred in the 8-pixel cell)."""
    y, x = np.mgrid[0:CELL, 0:CELL] - (CELL - 1) / 2
    inside = (np.abs(x) <= 3) & (np.abs(y) <= 3)
    if shape == "circle":
        return x**2 + y**2 <= 3.3**2
    if shape == "square":
        return inside
    if shape == "triangle":  # apex up
        return inside & (np.abs(x) <= (y + 3.5) / 2)
    if shape == "cross":
        return inside & ((np.abs(x) <= 1) | (np.abs(y) <= 1))
    raise ValueError(f"unknown shape {shape!r}")


def draw(scene: Scene) -> np.ndarray:
    """The scene as ``[IMAGE_SIZE, IMAGE_SIZE, 3]`` uint8 RGB (a dark, lightly noisy background)."""
    noise = np.random.default_rng(scene.seed).integers(-NOISE, NOISE + 1, (IMAGE_SIZE, IMAGE_SIZE, 1))
    image = np.clip(BACKGROUND + noise, 0, 255).repeat(3, axis=2).astype(np.uint8)
    for thing in scene.things:
        cell = image[thing.row * CELL : (thing.row + 1) * CELL, thing.column * CELL : (thing.column + 1) * CELL]
        cell[_mask(thing.shape)] = RGB[thing.colour]
    return image


def object_patches(thing: Thing) -> list[int]:
    """The image-token indices (row-major over the ``PATCH_GRID`` square) that ``thing`` covers."""
    side = CELL // PATCH
    return [(thing.row * side + r) * PATCH_GRID + thing.column * side + c for r in range(side) for c in range(side)]


def questions(scene: Scene) -> list[Question]:
    """Every question the toy world asks about ``scene``: each object's colour and shape, and
    whether each shape is there."""
    asked = []
    for thing in scene.things:
        asked.append(Question(f"what colour is the {thing.shape}", thing.colour, "colour_of", thing))
        asked.append(Question(f"what shape is {thing.colour}", thing.shape, "shape_of", thing))
    for shape in SHAPES:
        present = scene.thing(shape)
        asked.append(Question(f"is there a {shape}", "yes" if present else "no", "is_there", present))
    return asked


def vocabulary() -> list[str]:
    """Every word of the toy vision world, specials first (``<image>`` is the image placeholder)."""
    words = ["what", "colour", "is", "the", "shape", "there", "a", "yes", "no", *SHAPES, *COLOURS]
    return ["<pad>", "<unk>", "<bos>", "<eos>", "<image>", *words]
