//! Whether an instance's app is ready to serve: it reported APP_READY (the guest kernel
//! sends it when the app first listens on a vsock port, or the app writes it itself), as
//! arrow-vmm's `GET /vm` shows in `app_ready_ms`. A clone of a template snapshotted at
//! APP_READY restores an app that was already ready, so it is ready as soon as it runs.

use super::{Supervisor, API_SOCK};
use crate::templates::clone::vmm_api;
use crate::templates::model::SnapshotPoint;

impl Supervisor {
    /// True once the running instance `id`'s app has reported APP_READY; false while it
    /// boots, and for an instance that is not running.
    pub async fn app_ready(&self, id: &str) -> bool {
        let Ok(Some(rec)) = self.db.get(id) else {
            return false;
        };
        if !rec.state.is_active() {
            return false;
        }
        let sock = self.run_dir(id).join(API_SOCK);
        let Ok(vm) = vmm_api(&sock, hyper::Method::GET, "/vm", None).await else {
            return false;
        };
        if !vm["app_ready_ms"].is_null() {
            return true;
        }
        // Restored after APP_READY: the guest will not say it again.
        let restored = matches!(vm["state"].as_str(), Some("running"))
            && matches!(
                crate::templates::db::clone_of(&self.db, id),
                Ok(Some(c)) if !c.generic
                    && matches!(
                        crate::templates::db::find(&self.db, &c.template_id),
                        Ok(Some(t)) if t.spec.snapshot_at == SnapshotPoint::Ready
                    )
            );
        restored
    }
}
