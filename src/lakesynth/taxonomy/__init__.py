"""The taxonomy path: InstructLab and template trees, knowledge documents, leaf pairs and their checks."""
