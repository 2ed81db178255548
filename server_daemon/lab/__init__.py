"""What is not the shipped service: the simulator, the demo, the small generator's pretraining, tiny models.

The lab may import anything of the server; nothing outside it imports the lab (the CLI loads its
commands only when they run).
"""
