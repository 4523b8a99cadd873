"""Tools that are never deployed, one package per purpose: bench/, dev/, ops/, build/, web/.

Run each from the project root as a module: `python -m scripts.<group>.<module>` (the Makefile's targets do).
"""
