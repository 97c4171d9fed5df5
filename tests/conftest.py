import pathlib

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
