import os
import sys

# make `wa_status_backend` importable however pytest is invoked
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
