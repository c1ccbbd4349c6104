"""Pictures: the course's plot style, two-dimensional loss landscapes, and widgets the tests can sweep.

- :mod:`.plotting`: :func:`use_course_style` and the course's colours;
- :mod:`.landscapes`: test functions with known answers, trajectories on them, their plots;
- :mod:`.widgets`: :func:`interact`, ipywidgets' ``interact`` whose callbacks ``make test`` sweeps.
"""
