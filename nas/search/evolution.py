"""NAS stage one: an evolutionary search for the depth-augmented SubNet.

A candidate is a genome of the search space plus an augmentation multiple ``m`` (the space's
``aug_multiples``, e.g. 2.2 ... 3.2). It is feasible when

* its MF version costs at most ``budget * m`` (the SubNet may be m times the TargetNet's budget:
  its extra width and depth only ever run multiplicatively, during training), and
* the cheapest TargetNet that can be cut from it meets the budget itself.

Fitness is the SubNet's accuracy in the supernet (multiplicative, BN re-estimated). The loop is
OFA's (population, parents, mutation, crossover), but bounded: sampling a feasible candidate gives
up after ``max_tries`` and, when no candidate can ever be feasible, ``InfeasibleBudgetError`` names
the cheapest achievable cost instead of looping forever (OFA's EvolutionFinder hangs there).
Every generation is checkpointed (population, history, RNG state); a resumed search continues
the same trajectory.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from nas.errors import InfeasibleBudgetError
from nas.io import atomic_write_json, atomic_write_text
from nas.space import SearchSpace, TargetSpace

VERSION = 1


@dataclass
class Candidate:
    """A SubNet proposal of stage one: genome, augmentation multiple, its MF cost, its cheapest TargetNet's cost and its accuracy."""

    genome: dict[str, Any]
    multiple: float
    cost: float
    target_floor: float  # cost of the cheapest TargetNet cut from it
    accuracy: float | None = None

    def to_dict(self) -> dict:
        return {"genome": self.genome, "multiple": self.multiple, "cost": self.cost, "target_floor": self.target_floor, "accuracy": self.accuracy}


class EvolutionSearch:
    """Stage one: bounded evolution for the depth-augmented SubNet (module docstring). ``run`` checkpoints
    every generation and returns the best feasible ``Candidate``.
    """

    def __init__(self, space: SearchSpace, fitness: Callable, cost: Callable, budget: float, multiples: Sequence[float] | None = None,
                 population: int = 16, generations: int = 5, parent_ratio: float = 0.25, mutation_ratio: float = 0.5,
                 mutate_prob: float = 0.1, seed: int = 0, max_tries: int = 200, unit: str = "mJ",
                 batch_fitness: Callable[[list], list[float]] | None = None):
        self.space, self.fitness, self.cost_fn, self.budget = space, fitness, cost, budget
        self.multiples = tuple(multiples or space.aug_multiples)
        self.population_size, self.generations = population, generations
        self.n_parents = max(1, int(round(parent_ratio * population)))
        self.n_mutants = int(round(mutation_ratio * population))
        self.mutate_prob, self.max_tries, self.unit = mutate_prob, max_tries, unit
        self.rng = random.Random(seed)
        self.population: list[Candidate] = []
        self.history: list[dict] = []
        self.generation = 0
        self._costs: dict[str, tuple[float, float]] = {}
        # scores a whole generation at once (``Executor.evaluate``: e.g. on Ray actors); default: ``fitness`` one by one
        self.batch_fitness = batch_fitness

    # ------------------------------------------------------------------------------ feasibility
    def costs(self, genome: dict) -> tuple[float, float]:
        """(cost of the SubNet, cost of the cheapest TargetNet cut from it), cached."""
        key = json.dumps(genome, sort_keys=True)
        if key not in self._costs:
            sub = self.space.decode(genome, "subnet")
            ts = TargetSpace(self.space, sub)
            floor, _ = ts.decode(ts.extreme_genome(False))
            self._costs[key] = (self.cost_fn(sub), self.cost_fn(floor))
        return self._costs[key]

    def make(self, genome: dict, multiple: float) -> Candidate | None:
        cost, floor = self.costs(genome)
        if cost <= self.budget * multiple and floor <= self.budget:
            return Candidate(genome, multiple, cost, floor)
        return None

    def check_feasible(self) -> None:
        """Raise early when no SubNet of the space can ever satisfy the constraints."""
        floor = self.costs(self.space.extreme_genome(False))[1]
        if floor > self.budget:
            raise InfeasibleBudgetError(
                f"budget {self.budget:g} {self.unit} is below the cheapest TargetNet of space {self.space.name!r}: "
                f"{floor:.4g} {self.unit}; the smallest feasible budget is {floor:.4g} {self.unit}"
            )

    def _feasible(self, propose: Callable[[], tuple[dict, float]]) -> Candidate | None:
        for _ in range(self.max_tries):
            c = self.make(*propose())
            if c is not None:
                return c
        return None

    def _random(self) -> tuple[dict, float]:
        return self.space.sample_genome(self.rng), self.rng.choice(self.multiples)

    # ------------------------------------------------------------------------------ the loop
    def initial_population(self) -> list[Candidate]:
        pop = []
        # the smallest network is feasible whenever anything is (check_feasible): seed with it
        first = self.make(self.space.extreme_genome(False), max(self.multiples))
        if first is not None:
            pop.append(first)
        while len(pop) < self.population_size:
            c = self._feasible(self._random)
            if c is None:
                break  # the feasible region is tiny: carry on with what was found
            pop.append(c)
        if not pop:
            self.check_feasible()
            raise InfeasibleBudgetError(f"no feasible SubNet found in {self.max_tries} tries at budget {self.budget:g} {self.unit}")
        return pop

    def evaluate(self, pop: list[Candidate]) -> None:
        """Fitness of every candidate not yet scored, in one batch (``batch_fitness`` may fan it out)."""
        todo = [c for c in pop if c.accuracy is None]
        archs = [self.space.decode(c.genome, "subnet") for c in todo]
        scores = self.batch_fitness(archs) if self.batch_fitness is not None else [self.fitness(a) for a in archs]
        for c, acc in zip(todo, scores):
            c.accuracy = float(acc)

    def next_generation(self) -> list[Candidate]:
        parents = sorted(self.population, key=lambda c: (-c.accuracy, c.cost))[: self.n_parents]
        children: list[Candidate] = []
        for _ in range(self.n_mutants):
            p = self.rng.choice(parents)
            c = self._feasible(lambda: (self.space.mutate_genome(p.genome, self.rng, self.mutate_prob),  # noqa: B023 (called before the loop moves on)
                                        self.rng.choice(self.multiples) if self.rng.random() < self.mutate_prob else p.multiple))  # noqa: B023 (called before the loop moves on)
            if c is not None:
                children.append(c)
        while len(parents) + len(children) < self.population_size:
            a, b = self.rng.choice(parents), self.rng.choice(parents)
            c = self._feasible(lambda: (self.space.crossover_genome(a.genome, b.genome, self.rng), self.rng.choice((a.multiple, b.multiple))))  # noqa: B023 (called before the loop moves on)
            if c is None:
                break
            children.append(c)
        return [Candidate(**p.to_dict()) for p in parents] + children

    def run(self, checkpoint: Path | None = None, csv: Path | None = None, progress: bool = True) -> Candidate:
        from tqdm import tqdm

        self.check_feasible()
        if checkpoint is not None and checkpoint.is_file():
            self.load_state(json.loads(checkpoint.read_text()))
        if not self.population:
            self.population = self.initial_population()
        bar = tqdm(total=self.generations, initial=self.generation, desc="stage 1 (evolution)", disable=not progress, leave=False)
        while self.generation < self.generations:
            self.evaluate(self.population)
            for rank, c in enumerate(sorted(self.population, key=lambda c: (-c.accuracy, c.cost))):
                self.history.append({"generation": self.generation, "rank": rank, "multiple": c.multiple, "cost": c.cost,
                                     "target_floor": c.target_floor, "accuracy": c.accuracy,
                                     "arch_id": self.space.decode(c.genome).arch_id, "genome": json.dumps(c.genome, sort_keys=True)})
            self.generation += 1
            # always breed the next population (cheap: no evaluation), so a checkpoint taken here
            # continues identically whether the run ends now or is resumed with more generations
            self.population = self.next_generation()
            if checkpoint is not None:
                atomic_write_json(checkpoint, self.state())
            if csv is not None:
                write_csv(csv, self.history)
            bar.update(1)
            bar.set_postfix(best=f"{self.best().accuracy:.2f}%")
        bar.close()
        return self.best()

    def best(self) -> Candidate:
        done = [c for c in self.population if c.accuracy is not None]
        return max(done, key=lambda c: (c.accuracy, -c.cost))

    # ------------------------------------------------------------------------------ state
    def state(self) -> dict:
        v, st, g = self.rng.getstate()
        return {"version": VERSION, "generation": self.generation, "population": [c.to_dict() for c in self.population],
                "history": self.history, "rng": [v, list(st), g]}

    def load_state(self, d: dict) -> None:
        if d.get("version") != VERSION:
            from nas.errors import ConfigError

            raise ConfigError("stage-one checkpoint.version", d.get("version"), f"this version reads {VERSION}")
        self.generation = d["generation"]
        self.population = [Candidate(**c) for c in d["population"]]
        self.history = d["history"]
        v, st, g = d["rng"]
        self.rng.setstate((v, tuple(st), g))


def write_csv(path: Path, rows: list[dict]) -> None:
    import io

    import pandas as pd

    buf = io.StringIO()
    pd.DataFrame(rows).to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())
