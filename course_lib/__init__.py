"""course_lib: the tested library behind the course *How neural networks are optimized*.

Every lesson imports from here, and every lesson shows this library's own source.
"""

__version__ = "0.1.0"
