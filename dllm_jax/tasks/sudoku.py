"""4x4 Sudoku with a unique solution: ``"1030040020010340="`` -> ``"1234341221434321"``.

Grids are 16 characters, row by row, ``0`` for an empty cell. A puzzle is made from a uniformly
chosen valid grid (one of all 288) by emptying cells in random order, keeping each removal only
while the solution stays unique, until the drawn number of cells is empty.

The same class loads d1's 4x4 Sudoku test file (CSV columns ``Puzzle,Solution``) and scores
its worded prompts with the same rules: a completion solves an item when the grid in its last
``<answer>`` block passes :meth:`Sudoku.verify`, and :meth:`Sudoku.reward` is d1's partial
credit, :meth:`Sudoku.cell_accuracy` of that grid. Some of d1's puzzles have several solutions;
any of them solves the puzzle, while the partial credit compares with the published one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import numpy as np

from dllm_jax.errors import ConfigError
from dllm_jax.tasks.base import FORMAT_TAIL, DataFiles, Item
from dllm_jax.tasks.common import Example, Puzzle, check_fraction, fields_of, sample_examples

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

PROMPT = (
    "Solve this 4x4 Sudoku. Every row, every column and each of the four 2x2 boxes must "
    "contain the digits 1, 2, 3 and 4 exactly once. The grid is given row by row as 16 digits, "
    "with 0 for an empty cell:\n{puzzle}\nAnswer with the completed grid as 16 digits, row by "
    "row.\n" + FORMAT_TAIL.format(answer="16 digits"))
D1_FILES = DataFiles(files=("sudoku_4x4_test.csv", "4x4_test_sudoku.csv", "sudoku.csv"),
                     required=("Puzzle", "Solution"))


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


GRID_SPLITS = {"sft": 0.4, "rl": 0.3, "val": 0.15, "test": 0.15}  # shares of the 288 grids


@functools.cache
def grid_split_indices(name: str) -> np.ndarray:
    """Indices into :func:`all_grids` of the solution grids of part ``name`` of the fixed
    grid-level split (:data:`GRID_SPLITS`: 115 / 87 / 43 / 43 grids from one fixed
    permutation), so every puzzle of a grid lies in one part."""
    if name not in GRID_SPLITS:
        raise ValueError(f"sudoku.grid_split must be one of {sorted(GRID_SPLITS)}, got {name!r}")
    perm = np.random.default_rng(0x5D0C).permutation(len(all_grids()))
    bounds = np.round(np.cumsum([0.0, *GRID_SPLITS.values()]) * len(perm)).astype(int)
    i = list(GRID_SPLITS).index(name)
    return np.sort(perm[bounds[i]:bounds[i + 1]])


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
class Sudoku(Puzzle):
    """4x4 Sudoku puzzles with a unique solution and ``min_blanks..max_blanks`` empty cells.

    Items (generated ``meta`` or loaded d1 records) hold ``puzzle`` and ``solution``.

    Attributes:
      min_blanks / max_blanks: range of empty cells per puzzle, drawn uniformly (1..12; a 4x4
        puzzle needs at least 4 clues; greedy removal always reaches 10 and usually 12).
      test_fraction: share of puzzles (by puzzle string) reserved for the test split.
      grid_split: None, or a part of the grid-level split (``sft`` | ``rl`` | ``val`` |
        ``test``, see :func:`grid_split_indices`): puzzles come only from that part's solution
        grids, and the ``split`` argument of :meth:`generate` is not used (the parts never
        share a grid, hence never a puzzle).
    """

    name: ClassVar[str] = "sudoku"
    data: ClassVar[DataFiles] = D1_FILES
    min_blanks: int = 6
    max_blanks: int = 10
    test_fraction: float = 0.1
    grid_split: str | None = None

    def __post_init__(self) -> None:
        if self.grid_split is not None:
            grid_split_indices(self.grid_split)
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
        pool = (np.arange(len(grids)) if self.grid_split is None
                else grid_split_indices(self.grid_split))
        target = int(rng.integers(self.min_blanks, self.max_blanks + 1))
        while True:
            grid = grids[pool[rng.integers(len(pool))]]
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

        if self.grid_split is not None:  # the grid part is the split: every puzzle is in it
            return sample_examples(draw, seed=seed, n=n, split="test", test_fraction=1 - 1e-12,
                                   name=f"{self.name} ({self.grid_split} grids)")
        return sample_examples(draw, seed=seed, n=n, split=split,
                               test_fraction=self.test_fraction, name=self.name)

    def verify(self, example: Example | Item, completion: str) -> float:
        """1.0 if ``completion`` is a valid grid that keeps every given cell, else 0.0.

        (A generated puzzle's solution is unique, so this is the same as matching it.)
        """
        try:
            puzzle = str(fields_of(example)["puzzle"])
        except (KeyError, TypeError):
            return 0.0
        ok = isinstance(completion, str) and is_valid_solution(completion.strip(), puzzle)
        return 1.0 if ok else 0.0

    def cell_accuracy(self, example: Example | Item, completion: str) -> float:
        """Share of the puzzle's empty cells that ``completion`` fills as the reference
        solution does (d1's partial credit; given cells are not scored); 0.0 for malformed
        input or a puzzle without empty cells."""
        try:
            meta = fields_of(example)
            puzzle, solution = str(meta["puzzle"]), str(meta["solution"])
        except (KeyError, TypeError):
            return 0.0
        c = completion.strip() if isinstance(completion, str) else ""
        empty = [i for i in range(min(len(puzzle), len(solution))) if puzzle[i] == "0"]
        if not empty:
            return 0.0
        return sum(i < len(c) and c[i] == solution[i] for i in empty) / len(empty)

    def solution(self, item: Example | Item) -> str:
        return str(fields_of(item)["solution"])

    def from_record(self, record: Item) -> Item:
        """A d1 record (``Puzzle``, ``Solution``) with ``puzzle`` and ``solution``."""
        puzzle, solution = str(record["Puzzle"]), str(record["Solution"])
        for field, grid in (("Puzzle", puzzle), ("Solution", solution)):
            if len(grid) != CELLS or not grid.isdigit():
                raise ConfigError(f"sudoku record {record.get('id')}: {field} must be "
                                  f"{CELLS} digits, got {grid!r}")
        return {**record, "puzzle": puzzle, "solution": solution}

    def prompt_text(self, item: Item) -> str:
        return PROMPT.format(puzzle=item["puzzle"])

    def answer_of(self, completion: str) -> str | None:
        """The grid in the last ``<answer>`` block as d1 reads it: its digits in order, cut or
        padded with ``0`` to 16; None without an answer block or digits."""
        answer = super().answer_of(completion)
        digits = "" if answer is None else "".join(ch for ch in answer if ch.isdigit())
        return (digits + "0" * CELLS)[:CELLS] if digits else None

    def reward(self, item: Item, completion: str) -> float:
        """d1's reward: :meth:`cell_accuracy` of the answered grid (0.0 without one)."""
        grid = self.answer_of(completion)
        return 0.0 if grid is None else self.cell_accuracy(item, grid)

    def solved(self, item: Item, completion: str) -> bool:
        """Whether the answered grid passes :meth:`verify`."""
        grid = self.answer_of(completion)
        return grid is not None and self.verify(item, grid) == 1.0

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
