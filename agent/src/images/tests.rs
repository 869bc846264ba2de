//! The cases of kubelet's image_gc_manager_test.go, over the pure parts: detection, the threshold arithmetic and
//! the removal order.

use super::*;

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn image(n: u32, size: u64) -> ImageRecord {
    ImageRecord { id: format!("image-{n}"), size_bytes: size, ..Default::default() }
}

fn used(ids: &[u32]) -> BTreeSet<String> {
    ids.iter().map(|n| format!("image-{n}")).collect()
}

fn ids(order: &[(String, u64)]) -> Vec<&str> {
    order.iter().map(|(id, _)| id.as_str()).collect()
}

fn policy(high: i32, low: i32) -> ImageGcPolicy {
    ImageGcPolicy::new(high, low, Duration::ZERO).unwrap()
}

#[test]
fn the_initial_detection_records_every_image_and_when_the_used_ones_were_used() {
    // TestDetectImagesInitialDetect: image-1 is used by a container, image-0 is not.
    let mut records = BTreeMap::new();
    let images = [image(0, 1024), image(1, 2048), image(2, 2048)];
    detect_images(&mut records, &images, &used(&[1]), UNIX_EPOCH, t(10));
    assert_eq!(records.len(), 3);
    assert_eq!(
        records["image-0"],
        ImageUse { first_detected: UNIX_EPOCH, last_used: UNIX_EPOCH, size: 1024, pinned: false }
    );
    assert_eq!(records["image-1"].last_used, t(10));
    assert_eq!(records["image-2"].last_used, UNIX_EPOCH);
}

#[test]
fn a_new_image_is_first_detected_at_the_detection_and_removed_images_are_forgotten() {
    // TestDetectImagesWithNewImage and TestDetectImagesWithRemovedImages.
    let mut records = BTreeMap::new();
    detect_images(&mut records, &[image(0, 1024), image(1, 2048)], &used(&[]), UNIX_EPOCH, t(0));
    detect_images(&mut records, &[image(0, 1024), image(1, 2048), image(2, 1024)], &used(&[2]), t(5), t(6));
    assert_eq!(records["image-0"].first_detected, UNIX_EPOCH, "an image already known keeps its first detection");
    assert_eq!(records["image-2"].first_detected, t(5));
    assert_eq!(records["image-2"].last_used, t(6));
    detect_images(&mut records, &[image(2, 1024)], &used(&[]), t(7), t(8));
    assert_eq!(records.keys().collect::<Vec<_>>(), ["image-2"]);
    assert_eq!(records["image-2"].last_used, t(6), "an image no longer used keeps when it was last used");
}

#[test]
fn images_in_use_the_sandbox_image_and_pinned_images_are_never_candidates() {
    // TestFreeSpaceImagesInUseContainersAreIgnored, TestDeleteUnusedImagesExemptSandboxImage, TestDoNotDeletePinnedImage.
    let mut records = BTreeMap::new();
    let mut pinned = image(3, 4096);
    pinned.pinned = true;
    let sandbox = image(9, 700);
    let images = [image(0, 1024), image(1, 2048), pinned, sandbox];
    // The caller counts the sandbox image as in use.
    let in_use = used(&[1, 9]);
    detect_images(&mut records, &images, &in_use, UNIX_EPOCH, t(0));
    let order = removal_order(&records, &in_use, t(1), Duration::ZERO);
    assert_eq!(order, vec![("image-0".to_owned(), 1024)]);
}

#[test]
fn a_container_that_stopped_still_holds_its_image_until_it_is_removed() {
    // TestDetectImagesContainerStopped: the image is "used" while any container (running or not) references it;
    // once the container is gone it was last used at the previous detection and becomes a candidate after it.
    let mut records = BTreeMap::new();
    detect_images(&mut records, &[image(0, 1024), image(1, 2048)], &used(&[1]), UNIX_EPOCH, t(0));
    assert_eq!(ids(&removal_order(&records, &used(&[1]), t(0), Duration::ZERO)), ["image-0"]);
    detect_images(&mut records, &[image(0, 1024), image(1, 2048)], &used(&[]), t(5), t(5));
    assert_eq!(records["image-1"].last_used, t(0));
    assert_eq!(ids(&removal_order(&records, &used(&[]), t(5), Duration::ZERO)), ["image-0", "image-1"]);
}

#[test]
fn the_least_recently_used_go_first_and_ties_by_first_detection() {
    // TestFreeSpaceRemoveByLeastRecentlyUsed and TestFreeSpaceTiesBrokenByDetectedTime.
    let mut records = BTreeMap::new();
    detect_images(&mut records, &[image(0, 1024), image(1, 2048)], &used(&[0, 1]), UNIX_EPOCH, t(1));
    // image-0 goes on being used, image-1 does not: image-1 was used longer ago.
    detect_images(&mut records, &[image(0, 1024), image(1, 2048)], &used(&[0]), t(2), t(2));
    assert_eq!(ids(&removal_order(&records, &used(&[]), t(3), Duration::ZERO)), ["image-1", "image-0"]);

    let mut records = BTreeMap::new();
    detect_images(&mut records, &[image(0, 1024)], &used(&[0]), t(0), t(1));
    detect_images(&mut records, &[image(0, 1024), image(1, 2048)], &used(&[0, 1]), t(2), t(1));
    assert_eq!(records["image-0"].last_used, records["image-1"].last_used);
    assert_eq!(ids(&removal_order(&records, &used(&[]), t(3), Duration::ZERO)), ["image-0", "image-1"]);
}

#[test]
fn an_image_used_at_or_after_the_free_time_is_skipped() {
    let mut records = BTreeMap::new();
    detect_images(&mut records, &[image(0, 1024), image(1, 10)], &used(&[0]), UNIX_EPOCH, t(5));
    assert_eq!(ids(&removal_order(&records, &used(&[]), t(5), Duration::ZERO)), ["image-1"]);
    assert_eq!(ids(&removal_order(&records, &used(&[]), t(6), Duration::ZERO)), ["image-1", "image-0"]);
}

#[test]
fn an_image_younger_than_the_minimum_age_is_kept_until_it_is_old_enough() {
    // TestGarbageCollectImageNotOldEnough: one image in use, the other detected now; after MinAge it may go.
    let min_age = Duration::from_secs(60);
    let mut records = BTreeMap::new();
    detect_images(&mut records, &[image(0, 1024), image(1, 2048)], &used(&[1]), t(0), t(0));
    assert!(removal_order(&records, &used(&[1]), t(0), min_age).is_empty());
    assert!(removal_order(&records, &used(&[1]), t(59), min_age).is_empty());
    assert_eq!(removal_order(&records, &used(&[1]), t(60), min_age), vec![("image-0".to_owned(), 1024)]);
    // Detected at the agent's start (time unknown, long ago): no wait.
    let mut records = BTreeMap::new();
    detect_images(&mut records, &[image(0, 1024)], &used(&[]), UNIX_EPOCH, t(0));
    assert_eq!(ids(&removal_order(&records, &used(&[]), t(0), min_age)), ["image-0"]);
}

#[test]
fn below_the_high_threshold_nothing_is_freed() {
    // TestGarbageCollectBelowLowThreshold: 20% used with thresholds 90/80.
    assert_eq!(policy(90, 80).bytes_to_free(1000, 800).unwrap(), None);
    // kubelet divides the available share, not the used one: 89.9% used counts as 90 (100 - 1010/100) and is
    // at the threshold, 88.9% counts as 89 and is not.
    assert_eq!(policy(90, 80).bytes_to_free(1000, 101).unwrap(), Some(99));
    assert_eq!(policy(90, 80).bytes_to_free(1000, 111).unwrap(), None);
}

#[test]
fn at_or_above_the_high_threshold_enough_is_freed_to_reach_the_low_one() {
    // TestGarbageCollectBelowSuccess: 95% used, free to 80%: 1000 * 20% - 50 = 150 bytes.
    assert_eq!(policy(90, 80).bytes_to_free(1000, 50).unwrap(), Some(150));
    // Exactly at the high threshold counts.
    assert_eq!(policy(90, 80).bytes_to_free(1000, 100).unwrap(), Some(100));
    // kubelet's defaults on a 100 GiB filesystem with 10 GiB free: down to 80% used means 20 GiB free.
    let gib = 1u64 << 30;
    assert_eq!(policy(85, 80).bytes_to_free(100 * gib, 10 * gib).unwrap(), Some(10 * gib));
    // A low threshold of 0 frees everything that is used.
    assert_eq!(policy(1, 0).bytes_to_free(1000, 600).unwrap(), Some(400));
}

#[test]
fn available_above_capacity_counts_as_capacity_and_zero_capacity_is_an_error() {
    assert_eq!(policy(90, 80).bytes_to_free(1000, 5000).unwrap(), None);
    assert_eq!(policy(0, 0).bytes_to_free(1000, 5000).unwrap(), Some(0));
    let e = policy(90, 80).bytes_to_free(0, 0).unwrap_err();
    assert_eq!(e.to_string(), "invalid capacity 0 on image filesystem");
}

#[test]
fn not_freeing_enough_says_so_in_kubelets_words() {
    // TestGarbageCollectNotEnoughFreed: the FreeDiskSpaceFailed event's message.
    let e = ImageGcError::NotEnoughFreed { wanted: 150, freed: 50 };
    assert_eq!(
        e.to_string(),
        "Failed to garbage collect required amount of images. Attempted to free 150 bytes, but only found 50 bytes eligible to free."
    );
    assert_eq!(e.freed(), 50);
}

#[test]
fn the_policy_is_validated_as_kubelet_validates_it() {
    // TestValidateImageGCPolicy.
    assert_eq!(
        ImageGcPolicy::new(101, 80, Duration::ZERO).unwrap_err().to_string(),
        "invalid HighThresholdPercent 101, must be in range [0-100]"
    );
    assert_eq!(
        ImageGcPolicy::new(90, -1, Duration::ZERO).unwrap_err().to_string(),
        "invalid LowThresholdPercent -1, must be in range [0-100]"
    );
    assert_eq!(
        ImageGcPolicy::new(80, 90, Duration::ZERO).unwrap_err().to_string(),
        "LowThresholdPercent 90 can not be higher than HighThresholdPercent 80"
    );
    assert!(ImageGcPolicy::new(100, 80, Duration::ZERO).unwrap().disabled());
    assert!(!ImageGcPolicy::new(85, 80, Duration::ZERO).unwrap().disabled());
}
