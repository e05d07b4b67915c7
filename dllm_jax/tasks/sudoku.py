"""4x4 Sudoku with a unique solution: ``puzzle=`` (16 digits, 0 = empty) -> the 16-digit
solution."""

from __future__ import annotations

import dataclasses

import numpy as np

from dllm_jax.tasks.base import Example, sample_split

_UNITS = ([[r * 4 + c for c in range(4)] for r in range(4)]
          + [[r * 4 + c for r in range(4)] for c in range(4)]
          + [[(br + r) * 4 + bc + c for r in range(2) for c in range(2)]
             for br in (0, 2) for bc in (0, 2)])
_PEERS = [sorted({p for u in _UNITS if i in u for p in u} - {i}) for i in range(16)]


def count_solutions(grid: list[int], limit: int = 2) -> int:
    """Number of completions of ``grid`` (0 = empty), counting up to ``limit``."""
    try:
        i = grid.index(0)
    except ValueError:
        return 1
    total = 0
    for v in range(1, 5):
        if all(grid[p] != v for p in _PEERS[i]):
            grid[i] = v
            total += count_solutions(grid, limit - total)
            grid[i] = 0
            if total >= limit:
                break
    return total


def is_valid_solution(cells: str, puzzle: str) -> bool:
    """16 digits 1-4 agreeing with the puzzle's givens, every row/column/box a permutation."""
    if len(cells) != 16 or any(c not in "1234" for c in cells):
        return False
    if any(p != "0" and p != c for p, c in zip(puzzle, cells, strict=True)):
        return False
    return all(sorted(cells[i] for i in u) == list("1234") for u in _UNITS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sudoku:
    min_blanks: int = 6
    max_blanks: int = 10
    name: str = "sudoku"
    answer_length: int = 16

    def _draw(self, rng: np.random.Generator) -> Example:
        base = [[1, 2, 3, 4], [3, 4, 1, 2], [2, 1, 4, 3], [4, 3, 2, 1]]
        digits = rng.permutation(4) + 1
        bands = rng.permutation(2)
        rows = [b * 2 + r for b in bands for r in rng.permutation(2)]
        stacks = rng.permutation(2)
        cols = [s * 2 + c for s in stacks for c in rng.permutation(2)]
        grid = [int(digits[base[r][c] - 1]) for r in rows for c in cols]
        solution = "".join(map(str, grid))
        blanks = int(rng.integers(self.min_blanks, self.max_blanks + 1))
        puzzle = list(grid)
        removed = 0
        for i in rng.permutation(16):
            if removed == blanks:
                break
            keep = puzzle[i]
            puzzle[i] = 0
            if count_solutions(list(puzzle)) == 1:
                removed += 1
            else:
                puzzle[i] = keep
        p = "".join(map(str, puzzle))
        return Example(p + "=", solution, {"puzzle": p, "solution": solution})

    def generate(self, seed: int, n: int, split: str = "train") -> list[Example]:
        return sample_split(self._draw, seed, n, split)

    def verify(self, example: Example, completion: str) -> float:
        return float(is_valid_solution(completion.strip(), example.meta["puzzle"]))

    def cell_accuracy(self, example: Example, completion: str) -> float:
        """Fraction of the originally empty cells filled correctly (d1's partial credit)."""
        p, s = example.meta["puzzle"], example.meta["solution"]
        c = completion.strip()
        empty = [i for i in range(16) if p[i] == "0"]
        return sum(i < len(c) and c[i] == s[i] for i in empty) / max(len(empty), 1)
