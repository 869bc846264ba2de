//! kubelet's image garbage collection (pkg/kubelet/images/image_gc_manager.go): records of when each image was
//! first seen and last used, kept in memory; when the image filesystem is fuller than `imageGCHighThresholdPercent`,
//! unused images are removed, least recently used first, until it is down to `imageGCLowThresholdPercent`. An
//! image a container uses (running or not), the sandbox image, a pinned image, and one detected less than
//! `imageMinimumGCAge` ago are never removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Mutex;

use crate::kubetypes::events::{self as ev, EventRecorder, EventType};
use crate::runtime::stats::ImageRecord;
use crate::runtime::{Runtime, RuntimeError};

/// kubelet's `ImageGCPeriod` (pkg/kubelet/kubelet.go): how often the policy is applied.
pub const IMAGE_GC_PERIOD: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ImageGcError {
    /// kubelet's `NewImageGCManager` validation.
    #[error("invalid HighThresholdPercent {0}, must be in range [0-100]")]
    InvalidHigh(i32),
    #[error("invalid LowThresholdPercent {0}, must be in range [0-100]")]
    InvalidLow(i32),
    #[error("LowThresholdPercent {low} can not be higher than HighThresholdPercent {high}")]
    LowAboveHigh { low: i32, high: i32 },
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    #[error("the runtime reports no image filesystem")]
    NoImageFs,
    #[error("cannot read the size of the image filesystem at {0}")]
    ImageFsSize(String),
    #[error("invalid capacity 0 on image filesystem")]
    InvalidCapacity,
    /// kubelet's message, word for word: it is also the `FreeDiskSpaceFailed` event's.
    #[error("Failed to garbage collect required amount of images. Attempted to free {wanted} bytes, but only found {freed} bytes eligible to free.")]
    NotEnoughFreed { wanted: u64, freed: u64 },
    #[error("wanted to free {wanted} bytes, but freed {freed} bytes space with errors in image deletion: {errors}")]
    Deletion { wanted: u64, freed: u64, errors: String },
}

impl ImageGcError {
    /// What was freed before the error: removals that succeeded count even when others failed.
    pub fn freed(&self) -> u64 {
        match self {
            ImageGcError::NotEnoughFreed { freed, .. } | ImageGcError::Deletion { freed, .. } => *freed,
            _ => 0,
        }
    }
}

/// kubelet's `ImageGCPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageGcPolicy {
    /// Usage at or above this always triggers garbage collection.
    pub high_threshold_percent: i32,
    /// Garbage collection frees down to this usage.
    pub low_threshold_percent: i32,
    /// An image detected less than this ago is never removed: it may have just been pulled for a container.
    pub min_age: Duration,
}

impl ImageGcPolicy {
    pub fn new(
        high_threshold_percent: i32,
        low_threshold_percent: i32,
        min_age: Duration,
    ) -> Result<Self, ImageGcError> {
        if !(0..=100).contains(&high_threshold_percent) {
            return Err(ImageGcError::InvalidHigh(high_threshold_percent));
        }
        if !(0..=100).contains(&low_threshold_percent) {
            return Err(ImageGcError::InvalidLow(low_threshold_percent));
        }
        if low_threshold_percent > high_threshold_percent {
            return Err(ImageGcError::LowAboveHigh { low: low_threshold_percent, high: high_threshold_percent });
        }
        Ok(Self { high_threshold_percent, low_threshold_percent, min_age })
    }

    /// kubelet skips image GC altogether when the high threshold is 100 (`StartGarbageCollection`).
    pub fn disabled(&self) -> bool {
        self.high_threshold_percent == 100
    }

    /// kubelet's `GarbageCollect` arithmetic: the bytes to free when the image filesystem's usage is at or above the
    /// high threshold (enough to bring it down to the low one), `None` below it. An `available` above `capacity`
    /// counts as `capacity`.
    pub fn bytes_to_free(&self, capacity: u64, available: u64) -> Result<Option<u64>, ImageGcError> {
        if capacity == 0 {
            return Err(ImageGcError::InvalidCapacity);
        }
        let (capacity, available) = (i128::from(capacity), i128::from(available.min(capacity)));
        // Integer division as kubelet's: 100 - int(available*100/capacity).
        let usage_percent = 100 - available * 100 / capacity;
        if usage_percent < i128::from(self.high_threshold_percent) {
            return Ok(None);
        }
        let amount = capacity * i128::from(100 - self.low_threshold_percent) / 100 - available;
        Ok(Some(u64::try_from(amount).unwrap_or(0)))
    }
}

/// kubelet's `imageRecord`. The Go zero time ("unknown, long ago") is `UNIX_EPOCH` here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUse {
    pub first_detected: SystemTime,
    pub last_used: SystemTime,
    pub size: u64,
    pub pinned: bool,
}

/// kubelet's `detectImages` over its records: images new to the records are first detected at `detect_time`,
/// those in use were last used `now`, sizes and pins follow the runtime, and images the runtime no longer holds
/// are forgotten.
pub fn detect_images(
    records: &mut BTreeMap<String, ImageUse>,
    images: &[ImageRecord],
    in_use: &BTreeSet<String>,
    detect_time: SystemTime,
    now: SystemTime,
) {
    let current: BTreeSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
    records.retain(|id, _| current.contains(id.as_str()));
    for image in images {
        let record = records.entry(image.id.clone()).or_insert_with(|| ImageUse {
            first_detected: detect_time,
            last_used: UNIX_EPOCH,
            size: 0,
            pinned: false,
        });
        if in_use.contains(&image.id) {
            record.last_used = now;
        }
        record.size = image.size_bytes;
        record.pinned = image.pinned;
    }
}

/// kubelet's `freeSpace` choice: the images that may be removed at `free_time`, in the order to remove them
/// (least recently used first, ties broken by first detection). Images in use, pinned, used at or after
/// `free_time`, or detected less than `min_age` before it are left out.
pub fn removal_order(
    records: &BTreeMap<String, ImageUse>,
    in_use: &BTreeSet<String>,
    free_time: SystemTime,
    min_age: Duration,
) -> Vec<(String, u64)> {
    let mut candidates: Vec<(&String, &ImageUse)> = records
        .iter()
        .filter(|(id, record)| !in_use.contains(*id) && !record.pinned)
        .filter(|(_, record)| record.last_used < free_time)
        .filter(|(_, record)| free_time.duration_since(record.first_detected).is_ok_and(|age| age >= min_age))
        .collect();
    candidates.sort_by(|(_, a), (_, b)| a.last_used.cmp(&b.last_used).then(a.first_detected.cmp(&b.first_detected)));
    candidates.into_iter().map(|(id, record)| (id.clone(), record.size)).collect()
}

#[derive(Debug, Default)]
struct Records {
    images: BTreeMap<String, ImageUse>,
    /// The first detection has run: images found then count as detected long ago (kubelet's `initialized`).
    initialized: bool,
}

/// kubelet's `realImageGCManager`.
pub struct ImageGcManager {
    runtime: Runtime,
    policy: ImageGcPolicy,
    events: EventRecorder,
    /// Held across a whole detection or removal round, as kubelet holds `imageRecordsLock`: the periodic loop and
    /// the eviction manager's `delete_unused_images` never remove at the same time.
    records: Mutex<Records>,
    /// kubelet's `--pod-infra-container-image`, always in use.
    sandbox_image: Option<String>,
}

impl ImageGcManager {
    pub fn new(runtime: Runtime, policy: ImageGcPolicy, events: EventRecorder) -> Self {
        Self { runtime, policy, events, records: Mutex::default(), sandbox_image: None }
    }

    /// The sandbox image kubelet's flag names: image_gc_manager.go always counts it as in use.
    pub fn with_sandbox_image(mut self, image: Option<String>) -> Self {
        self.sandbox_image = image.filter(|i| !i.is_empty());
        self
    }

    /// The images containers use (running or not, also those of other CRI clients), and the sandbox image, which
    /// kubelet always counts as in use.
    async fn images_in_use(&self) -> Result<BTreeSet<String>, ImageGcError> {
        let mut in_use = BTreeSet::new();
        let mut sandbox_images: Vec<String> = self.sandbox_image.iter().cloned().collect();
        match self.runtime.sandbox_image().await {
            Ok(Some(image)) => sandbox_images.push(image),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "cannot learn the runtime's sandbox image"),
        }
        for image in sandbox_images {
            match self.runtime.image_ref(&image).await {
                Ok(Some(id)) => {
                    in_use.insert(id);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(image, error = %e, "cannot resolve the sandbox image"),
            }
        }
        in_use.extend(self.runtime.image_ids_in_use().await?);
        Ok(in_use)
    }

    async fn detect(&self, records: &mut Records, detect_time: SystemTime) -> Result<BTreeSet<String>, ImageGcError> {
        let in_use = self.images_in_use().await?;
        let images = self.runtime.list_images().await?;
        detect_images(&mut records.images, &images, &in_use, detect_time, SystemTime::now());
        Ok(in_use)
    }

    /// kubelet's periodic detection (`Start`): the first one makes the detected time unknown, in the past, so that
    /// images already on the node when the agent starts need not wait `imageMinimumGCAge`.
    pub async fn detect_periodically(&self) {
        let mut records = self.records.lock().await;
        let detect_time = if records.initialized { SystemTime::now() } else { UNIX_EPOCH };
        match self.detect(&mut records, detect_time).await {
            Ok(_) => records.initialized = true,
            Err(e) => tracing::info!(error = %e, "Failed to monitor images"),
        }
    }

    /// The image filesystem's capacity and available bytes (kubelet's `ImageFsStats`: CRI `ImageFsInfo` names the
    /// mountpoint, the filesystem's size comes from statvfs as cadvisor reads it).
    async fn image_fs(&self) -> Result<(u64, u64), ImageGcError> {
        let fs = self.runtime.image_fs_info().await?;
        let mountpoint = fs.into_iter().next().map(|f| f.mountpoint).ok_or(ImageGcError::NoImageFs)?;
        let size = crate::stats::node::statvfs(Path::new(&mountpoint)).ok_or(ImageGcError::ImageFsSize(mountpoint))?;
        Ok((size.capacity_bytes, size.available_bytes))
    }

    /// kubelet's `GarbageCollect`: frees down to the low threshold when the image filesystem is at or above the
    /// high one. Not freeing enough is an error and a `FreeDiskSpaceFailed` warning on the node.
    pub async fn garbage_collect(&self) -> Result<(), ImageGcError> {
        let (capacity, available) = self.image_fs().await?;
        if available > capacity {
            tracing::info!(available, capacity, "Availability is larger than capacity");
        }
        let amount = match self.policy.bytes_to_free(capacity, available) {
            Ok(amount) => amount,
            Err(e) => {
                self.events.record_node(EventType::Warning, ev::INVALID_DISK_CAPACITY, e.to_string());
                return Err(e);
            }
        };
        let Some(amount) = amount else { return Ok(()) };
        let usage = 100 - u128::from(available.min(capacity)) * 100 / u128::from(capacity);
        tracing::info!(
            usage,
            high_threshold = self.policy.high_threshold_percent,
            amount_to_free = amount,
            low_threshold = self.policy.low_threshold_percent,
            "Disk usage on image filesystem is over the high threshold, trying to free bytes down to the low threshold"
        );
        let freed = self.free_space(amount, SystemTime::now()).await?;
        if freed < amount {
            let e = ImageGcError::NotEnoughFreed { wanted: amount, freed };
            self.events.record_node(EventType::Warning, ev::FREE_DISK_SPACE_FAILED, e.to_string());
            return Err(e);
        }
        Ok(())
    }

    /// kubelet's `DeleteUnusedImages`, which the eviction manager calls under disk pressure: removes every image
    /// that may be removed, and says how many bytes that freed.
    pub async fn delete_unused_images(&self) -> Result<u64, ImageGcError> {
        tracing::info!("Attempting to delete unused images");
        self.free_space(u64::MAX, SystemTime::now()).await
    }

    /// kubelet's `freeSpace`: removes images in [`removal_order`] until `bytes_to_free` are freed; a failed removal
    /// does not stop the others.
    async fn free_space(&self, bytes_to_free: u64, free_time: SystemTime) -> Result<u64, ImageGcError> {
        let mut records = self.records.lock().await;
        let in_use = self.detect(&mut records, free_time).await?;
        let mut errors = Vec::new();
        let mut freed = 0u64;
        for (id, size) in removal_order(&records.images, &in_use, free_time, self.policy.min_age) {
            tracing::info!(image_id = %id, size, "Removing image to free bytes");
            if let Err(e) = self.runtime.remove_image(&id).await {
                errors.push(format!("{id}: {e}"));
                continue;
            }
            records.images.remove(&id);
            freed = freed.saturating_add(size);
            if freed >= bytes_to_free {
                break;
            }
        }
        if !errors.is_empty() {
            return Err(ImageGcError::Deletion { wanted: bytes_to_free, freed, errors: errors.join(", ") });
        }
        Ok(freed)
    }

    /// kubelet's `Start` and the image half of `StartGarbageCollection`: detection and the policy every `period`.
    /// A failure is logged; a second one in a row is also an `ImageGCFailed` warning on the node, since the first
    /// may only mean that stats are not ready yet.
    pub async fn run(self: std::sync::Arc<Self>, period: Duration) {
        if self.policy.disabled() {
            tracing::info!("ImageGCHighThresholdPercent is set 100, Disable image GC");
        }
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prev_failed = false;
        loop {
            tick.tick().await;
            self.detect_periodically().await;
            if self.policy.disabled() {
                continue;
            }
            match self.garbage_collect().await {
                Err(e) if prev_failed => {
                    tracing::error!(error = %e, "Image garbage collection failed multiple times in a row");
                    self.events.record_node(EventType::Warning, ev::IMAGE_GC_FAILED, e.to_string());
                }
                Err(e) => {
                    tracing::error!(error = %e, "Image garbage collection failed once. Stats initialization may not have completed yet");
                    prev_failed = true;
                }
                Ok(()) if prev_failed => {
                    tracing::info!("Image garbage collection succeeded");
                    prev_failed = false;
                }
                Ok(()) => tracing::debug!("Image garbage collection succeeded"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
