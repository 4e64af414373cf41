"""PRISM: Purified Representation and Integrated Semantic Modeling (library).

Each equation of the paper (../shared/paper/prism-paper.md) has one home, named in the docstring of
the function that implements it.
"""

__version__ = "0.1.0"
