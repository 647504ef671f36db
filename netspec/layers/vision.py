"""Layer implementations (vision); see base.py for the contract."""
