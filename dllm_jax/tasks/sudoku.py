"""4x4 Sudoku with a unique solution: ``"1030040020010340="`` -> ``"1234341221434321"``.

Grids are 16 characters, row by row, ``0`` for an empty cell. A puzzle is made from a uniformly
chosen valid grid (one of all 288) by emptying cells in random order, keeping each removal only
while the solution stays unique, until the drawn number of cells is empty.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import numpy as np

from dllm_jax.tasks.common import Example, check_fraction, sample_examples

N = 4
CELLS = N * N
# The 12 units (4 rows, 4 columns, 4 boxes) as cell indices.
UNITS: tuple[tuple[int, ...], ...] = (
    tuple(tuple(r * N + c for c in range(N)) for r in range(N))
    + tuple(tuple(r * N + c for r in range(N)) for c in range(N))
    + tuple(tuple((br + r) * N + bc + c for r in range(2) for c in range(2))
            for br in (0, 2) for bc in (0, 2)))
PEERS: tuple[frozenset[int], ...] = tuple(
    frozenset(j for u in UNITS if i in u for j in u) - {i} for i in range(CELLS))


def solve_all(puzzle: list[int] | tuple[int, ...],
              limit: int | None = None) -> list[tuple[int, ...]]:
    """All solutions of ``puzzle`` (16 ints, 0 = empty) by backtracking, at most ``limit``."""
    grid = list(puzzle)
    out: list[tuple[int, ...]] = []

    def rec() -> bool:  # True: stop, the limit is reached
        try:
            i = grid.index(0)
        except ValueError:
            out.append(tuple(grid))
            return limit is not None and len(out) >= limit
        used = {grid[j] for j in PEERS[i]}
        for v in range(1, N + 1):
            if v not in used:
                grid[i] = v
                if rec():
                    return True
        grid[i] = 0
        return False

    if all(grid[i] == 0 or grid[i] not in {grid[j] for j in PEERS[i]} for i in range(CELLS)):
        rec()
    return out


def count_solutions(puzzle: str | list[int], limit: int = 2) -> int:
    """Number of solutions of a puzzle, counted by backtracking up to ``limit``."""
    cells = [int(c) for c in puzzle] if isinstance(puzzle, str) else list(puzzle)
    return len(solve_all(cells, limit))


@functools.cache
def all_grids() -> np.ndarray:
    """Every valid 4x4 grid (288 of them), ``[288, 16]`` int8, by backtracking from empty."""
    return np.asarray(solve_all([0] * CELLS), np.int8)


def is_valid_grid(cells: str) -> bool:
    """True if ``cells`` is 16 digits 1-4 with every row, column and box a permutation."""
    if len(cells) != CELLS or any(c not in "1234" for c in cells):
        return False
    return all(len({cells[i] for i in u}) == N for u in UNITS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sudoku:
    """4x4 Sudoku puzzles with a unique solution and ``min_blanks..max_blanks`` empty cells.

    Attributes:
      min_blanks / max_blanks: range of empty cells per puzzle, drawn uniformly (1..12; a 4x4
        puzzle needs at least 4 clues; greedy removal always reaches 10 and usually 12).
      test_fraction: share of puzzles (by puzzle string) reserved for the test split.
    """

    name: ClassVar[str] = "sudoku"
    min_blanks: int = 6
    max_blanks: int = 10
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        for f in ("min_blanks", "max_blanks"):
            v = getattr(self, f)
            if not isinstance(v, int) or not 1 <= v <= 12:
                raise ValueError(f"sudoku.{f} must be an int in 1..12, got {v!r}")
        if self.min_blanks > self.max_blanks:
            raise ValueError(f"sudoku.min_blanks ({self.min_blanks}) exceeds max_blanks "
                             f"({self.max_blanks})")
        check_fraction(self.test_fraction)

    @property
    def prompt_length(self) -> int:
        return CELLS + 1

    @property
    def answer_length(self) -> int:
        return CELLS

    def make(self, puzzle: str, solution: str) -> Example:
        return Example(prompt=puzzle + "=", answer=solution,
                       meta={"puzzle": puzzle, "solution": solution, "answer_length": CELLS})

    def _draw_puzzle(self, rng: np.random.Generator) -> tuple[str, str]:
        grids = all_grids()
        target = int(rng.integers(self.min_blanks, self.max_blanks + 1))
        while True:
            grid = grids[rng.integers(len(grids))]
            puzzle = grid.copy()
            blanks = 0
            for cell in rng.permutation(CELLS):
                puzzle[cell] = 0
                given = puzzle != 0
                # Uniqueness against the table of all grids (exact, and far faster than
                # backtracking once per removal); tests confirm it with the solver.
                if int((grids[:, given] == puzzle[given]).all(axis=1).sum()) == 1:
                    blanks += 1
                    if blanks == target:
                        return "".join(map(str, puzzle)), "".join(map(str, grid))
                else:
                    puzzle[cell] = grid[cell]

    def generate(self, seed: int, n: int, split: str = "train") -> list[Example]:
        """``n`` distinct puzzles of ``split``; train and test never share a puzzle."""

        def draw(rng: np.random.Generator) -> tuple[str, Example]:
            puzzle, solution = self._draw_puzzle(rng)
            return puzzle, self.make(puzzle, solution)

        return sample_examples(draw, seed=seed, n=n, split=split,
                               test_fraction=self.test_fraction, name=self.name)

    def verify(self, example: Example | dict[str, Any], completion: str) -> float:
        """1.0 if ``completion`` is a valid grid that keeps every given cell, else 0.0.

        (The puzzle's solution is unique, so this is the same as matching it.)
        """
        try:
            meta = example.meta if isinstance(example, Example) else example
            if not isinstance(completion, str):
                return 0.0
            return 1.0 if is_valid_solution(completion.strip(), str(meta["puzzle"])) else 0.0
        except (KeyError, TypeError, ValueError):
            return 0.0

    def cell_accuracy(self, example: Example | dict[str, Any], completion: str) -> float:
        """Share of the puzzle's empty cells that ``completion`` fills correctly (d1's partial
        credit); 0.0 for malformed input."""
        try:
            meta = example.meta if isinstance(example, Example) else example
            puzzle, solution = str(meta["puzzle"]), str(meta["solution"])
            c = completion.strip() if isinstance(completion, str) else ""
            empty = [i for i in range(CELLS) if puzzle[i] == "0"]
            if not empty:
                return 0.0
            return sum(i < len(c) and c[i] == solution[i] for i in empty) / len(empty)
        except (KeyError, TypeError, ValueError, IndexError):
            return 0.0

    def format_reward(self, completion: str) -> float:
        """1.0 if ``completion`` is 16 digits from 1-4 (solved or not)."""
        if not isinstance(completion, str):
            return 0.0
        c = completion.strip()
        return 1.0 if len(c) == CELLS and all(ch in "1234" for ch in c) else 0.0


def is_valid_solution(cells: str, puzzle: str) -> bool:
    """True if ``cells`` is a valid grid keeping every given cell of ``puzzle``."""
    return (isinstance(cells, str) and isinstance(puzzle, str) and len(puzzle) == CELLS
            and is_valid_grid(cells)
            and all(p in ("0", g) for p, g in zip(puzzle, cells, strict=True)))
