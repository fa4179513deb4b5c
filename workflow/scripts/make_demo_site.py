"""A second synthetic site: new demo patients under another contrast, gamma, field of view and
noise, in NORMAL/ and PNEUMONIA/ folders (config/demo.yaml evaluates it as an external set).

Outputs: root=data/demo/site2
Params:  demo (site, size)
"""

from pneumocxr.data.demo import generate_demo_site
from pneumocxr.stage import stage_io

io = stage_io(globals())
with io.logging():
    demo = io.params["demo"]
    generate_demo_site(io.output["root"], size=demo["size"], **demo["site"],
                       progress=io.progress)
