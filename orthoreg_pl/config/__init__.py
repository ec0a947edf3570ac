"""How a job's configuration is read: Hydra resolvers, λ, the config groups and experiments, and the
validation mechanism with the rules of the groups every script composes.

Light on purpose (no torch): the command line is checked with this package before anything heavy loads.
"""
