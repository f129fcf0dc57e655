"""What the tests share besides fixtures: databases copied from templates, free ports, the API's tokens and
servers. Fixtures stay in the ``conftest.py`` of the folder that uses them; helpers live here, public."""
