"""Layer implementations (common); see base.py for the contract."""
