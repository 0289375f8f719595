"""A benchmark of real deep-learning faults that deepdiag's rules were not written for.

Healthy base programs (``programs.BASES``: small plain-PyTorch training programs of different
families) are mutated by operators from the taxonomy of real faults (Humbatova et al., "Taxonomy of
Real Faults in Deep Learning Systems", ICSE 2020) as DeepCrime defines them (Humbatova, Jahangirova,
Tonella, "DeepCrime: Mutation Testing of Deep Learning Systems Based on Real Faults", ISSTA 2021):
``operators.OPERATORS``. A mutant counts as a real fault only when, trained in plain torch with the
same seed and budget, it measurably hurts its base (``harness.killed``). deepdiag then judges every
program as a user would (``dd.checkup`` on the first batch, ``dd.Monitor`` in the loop), and a real
fault is detected when a finding at severity >= warning carries a code that the operator's theory
accepts (``operators.ACCEPTED``, written from the mechanism of each fault, not from deepdiag's output).

    PYTHONPATH=src python -m benchmarks.real_faults [--quick] [--family F] [--operator O] [--out FILE]
"""
