"""pneumocxr: reproducible pneumonia detection and typing on pediatric chest X-rays."""

__version__ = "0.1.0"

CLASS_NAMES_BINARY = ("normal", "pneumonia")
CLASS_NAMES_3 = ("normal", "bacteria", "virus")
