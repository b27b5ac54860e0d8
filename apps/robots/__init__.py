"""Net4LM (whitepaper 3.1): a fleet of robot arms that learn from their own experience and
share what they learned as MFD model packets.

- :mod:`apps.robots.config`  robots scenario files (TOML), validated, errors name the field
- :mod:`apps.robots.fleet`   the fleet as an MFD World: cells, SB3 learners, radio network
- :mod:`apps.robots.run`     run fleets, save results and policies, render the robots acting
- :mod:`apps.robots.report`  curves, bytes, frames and an HTML page
- :mod:`apps.robots.cli`     ``mfd robots demo | compare | play``
"""
