//! asdk: Arrow images (placeholder until issue 3 lands).
