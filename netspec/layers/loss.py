"""Layer implementations (loss); see base.py for the contract."""
