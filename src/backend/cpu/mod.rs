//! fp32 reference backend (under construction)
