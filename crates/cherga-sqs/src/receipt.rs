//! Receipt handles: the task id and the fencing token of the lease a receive
//! made, so that only the current holder of a message can delete it or change
//! its visibility.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cherga_core::TaskId;

/// The receipt handle of a task leased with `token`.
pub(crate) fn encode(id: TaskId, token: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{id}:{token}"))
}

/// The task id and lease token a receipt handle carries; `None` when it is not
/// one this endpoint gave.
pub(crate) fn decode(handle: &str) -> Option<(TaskId, String)> {
    let bytes = URL_SAFE_NO_PAD.decode(handle.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (id, token) = text.split_once(':')?;
    if token.is_empty() {
        return None;
    }
    Some((TaskId::parse(id)?, token.to_owned()))
}
