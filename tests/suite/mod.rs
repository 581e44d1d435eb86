//! The shared suite: written once in async style, compiled for each flavour by the including
//! test target (which defines `dual`, `flavor` and `suite_tests!`).

mod answers;
mod control;
mod data;
mod desktop;
mod egress_attacks;
mod faults;
mod isolation;
mod network;
mod preview;
mod server_attacks;
mod snapshots;
mod streams;
mod templates;
mod wire;

#[allow(unused_imports)]
pub use answers::*;
#[allow(unused_imports)]
pub use control::*;
#[allow(unused_imports)]
pub use data::*;
#[allow(unused_imports)]
pub use desktop::*;
#[allow(unused_imports)]
pub use egress_attacks::*;
#[allow(unused_imports)]
pub use faults::*;
#[allow(unused_imports)]
pub use isolation::*;
#[allow(unused_imports)]
pub use network::*;
#[allow(unused_imports)]
pub use preview::*;
#[allow(unused_imports)]
pub use server_attacks::*;
#[allow(unused_imports)]
pub use snapshots::*;
#[allow(unused_imports)]
pub use streams::*;
#[allow(unused_imports)]
pub use templates::*;
#[allow(unused_imports)]
pub use wire::*;

use superserve::local::LocalServer;
use superserve::CreateOptions;

use crate::common;
use crate::dual;
use crate::flavor::Sandbox;

/// Creates a sandbox named `name` on a target or local backend.
#[dual]
pub async fn make(target: &impl common::SdkConfig, name: &str) -> Sandbox {
    Sandbox::create_with_config(&target.sdk_config(), CreateOptions::new(name))
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
}

/// Waits (bounded) until `seen` contains `needle`; panics if it never does.
#[dual]
pub async fn wait_for(seen: &std::sync::Arc<std::sync::Mutex<String>>, needle: &str) {
    for _ in 0..1000 {
        if seen.lock().unwrap().contains(needle) {
            return;
        }
        crate::flavor::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("never saw {needle:?} in {:?}", seen.lock().unwrap());
}

/// Requests the backend received with this method and path.
pub fn count(server: &LocalServer, method: &str, path: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.method == method && r.path == path)
        .count()
}

/// Requests the backend received with this method and a path starting with `prefix`.
#[allow(dead_code)] // used by one flavour only
pub fn count_prefix(server: &LocalServer, method: &str, prefix: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.method == method && r.path.starts_with(prefix))
        .count()
}

/// A sandbox whose access token the backend has just invalidated.
#[dual]
pub async fn stale_token_setup() -> (LocalServer, Sandbox) {
    let server = common::server();
    let sb = make(&server, "stale").await;
    let warm_up_exit = sb.commands().run("true").await.unwrap().exit_code;
    assert_eq!(warm_up_exit, 0);
    server.expire_tokens(sb.id());
    server.clear_requests();
    (server, sb)
}

pub fn assert_single_activate(server: &LocalServer, sb: &Sandbox) {
    let activates = count(server, "POST", &format!("/sandboxes/{}/activate", sb.id()));
    assert_eq!(
        activates, 1,
        "concurrent stale callers must share one activate"
    );
    let refused = server
        .requests()
        .iter()
        .filter(|r| r.path == "/exec" && r.status == 401)
        .count();
    assert!(
        refused >= 1,
        "at least one call must have met the stale token"
    );
}

suite_tests!(
    // snapshots
    snapshot_boots_independent_forks_with_the_snapshot_time_state,
    snapshot_chains_and_deletes_while_in_use,
    snapshot_idempotency_key_rename_and_errors,
    snapshot_bad_bodies_are_refused_by_the_backend,
    snapshots_survive_a_restart,
    a_fork_counts_only_its_own_writes,
    a_fork_gets_the_captured_configuration,
    a_slow_capture_answers_202_creating_then_becomes_ready,
    // templates
    template_build_steps_show_up_in_sandboxes,
    template_user_step_sets_the_default_user,
    template_from_a_template_and_a_failing_step,
    template_cancel_and_rebuild_idempotency,
    templates_survive_a_restart_and_interrupted_builds_fail,
    template_from_oci_images_by_reference_and_through_a_mirror,
    template_builds_queue_with_system_events_and_hit_the_build_limit,
    // control plane
    lifecycle_and_accessors,
    create_validation_sends_nothing,
    connect_rotates_token_and_resumes,
    list_filters_and_query_encoding,
    update_tri_state_and_update_by_id,
    pause_resume_keeps_process_state,
    pause_wait_and_conflicts,
    secret_bindings,
    network_log_paging_empty,
    authentication_and_not_found,
    request_shapes,
    // data plane
    run_basics,
    run_streamed_with_callbacks,
    stream_cut_before_finished_is_error,
    stream_idle_timeout,
    spawn_stdin_eof_and_signal,
    session_cut_midway_is_error,
    files_round_trips,
    files_streamed_multi_mib,
    files_zip_and_validation,
    paused_sandbox_resumed_by_data_plane,
    stale_token_refresh_once,
    isolation_between_sandboxes,
    restart_keeps_records_and_files,
    streamed_upload_to_a_paused_sandbox_probes_first,
    data_plane_waits_out_a_pause_in_progress,
    streamed_upload_reports_a_failed_reactivate,
    // faults and wire shapes
    retries_on_transient_statuses,
    no_retry_for_post_and_patch,
    delete_conflict_retried_up_to_eleven,
    dropped_connection_retried_for_get_only,
    rate_limit_error_carries_code_and_retry_after,
    malformed_responses_are_decode_errors,
    html_error_page_is_typed,
    timeouts_are_typed,
    unreachable_server_is_connection_error,
    connect_waits_out_sandbox_pausing,
    expired_routing_hint_refreshes_first,
    pause_wait_polls_until_paused,
    resume_waits_out_a_pause_in_progress,
    // egress, secrets, network log
    egress_allowed_blocked_and_logged,
    egress_rules_updated_on_a_live_sandbox,
    secrets_crud_rotate_and_providers,
    brokered_secret_injected_audited_and_revoked,
    brokered_secret_over_https,
    brokered_https_never_reaches_an_unverified_upstream,
    secret_rotation_and_deletion_at_egress,
    the_hosts_own_addresses_are_blocked,
    network_log_pages_through_hundreds_of_events,
    brokered_secret_after_restart_and_with_a_replaced_key,
    standin_sent_to_another_secrets_host_is_refused,
    // output as events, stdin and files as I/O, bounded memory
    run_stream_yields_output_then_exit,
    run_stream_cut_short_ends_with_an_error,
    dropping_run_stream_stops_the_command,
    session_events_pull_style,
    session_stdin_is_an_io_writer,
    signals_are_typed,
    dropping_a_session_terminates_its_command,
    callbacks_may_own_and_mutate_state,
    open_read_streams_a_file,
    collected_output_is_capped_while_callbacks_see_everything,
    exec_events_from_a_session_and_a_stream_agree,
    tracing_spans_never_carry_secrets,
    network_log_filters_take_system_times,
    // right answers, cleanup, conveniences
    a_command_that_cannot_start_is_the_same_error_on_every_path,
    the_default_timeout_keeps_the_output,
    a_killed_handle_refuses_everything_before_sending,
    data_plane_errors_carry_codes,
    check_turns_a_failed_command_into_an_error,
    kill_on_drop_kills_and_into_inner_keeps,
    fault_rules_target_the_nth_request,
    // wire shapes against a scripted server
    preview_calls_have_the_hosted_shapes,
    snapshot_calls_have_the_hosted_shapes,
    template_calls_have_the_hosted_shapes,
    desktop_calls_have_the_hosted_shapes,
    // hostile sandboxes against egress, DNS and the broker
    special_purpose_ranges_and_the_hosts_networks_are_blocked,
    brokered_secret_needs_a_matching_host_header,
    brokered_https_needs_matching_sni_and_host,
    dns_refuses_names_no_rule_allows,
    // hostile clients and input against the listeners and handlers
    idle_and_slowloris_clients_cannot_starve_the_backend,
    a_full_listener_sheds_with_a_fast_503,
    idle_and_slow_connections_are_closed,
    out_of_range_numbers_are_rejected,
    system_errors_are_client_errors,
    hostile_directory_trees_cannot_break_zip_downloads,
    clients_that_hang_up_leave_nothing_half_made,
    // isolation: hostile processes inside sandboxes
    agent_is_out_of_reach_from_inside,
    stopped_children_in_one_sandbox_stall_nobody_else,
    sandbox_root_is_not_host_root,
    data_directory_and_database_are_private,
    ipc_is_not_shared,
    dangerous_syscalls_are_blocked,
    fork_bomb_hits_the_sandbox_pids_limit,
    memory_limit_counts_swap,
    a_restart_never_mounts_a_disk_twice,
    hang_ups_during_a_restart_leave_the_sandbox_whole,
    disk_quota_is_enforced,
    kill_9_in_the_middle_of_creates_then_restart,
    // preview ports through the local preview proxy (raw HTTP, curl, WebSocket, Chromium)
    private_preview_with_header_token_and_signed_url,
    preview_tokens_open_only_their_own_port_and_sandbox,
    preview_access_policies,
    preview_error_pages_and_control_plane_answers,
    preview_websocket_echo,
    preview_streams_bodies_both_ways,
    preview_proxy_frames_http11_itself,
    wait_for_port_waits_for_a_late_server,
    preview_ports_survive_a_restart,
    preview_in_a_real_browser,
    superserve_local_prints_the_preview_address,
    the_preview_listener_survives_hostile_clients,
    // the desktop of superserve/desktop sandboxes (Xvfb, XTEST, a Tk app, noVNC in Chromium)
    desktop_drives_a_tk_app,
    desktop_resize_changes_the_screenshot_size,
    desktop_calls_on_a_non_desktop_sandbox_are_refused,
    desktop_bad_raw_requests_get_connect_errors,
    desktop_survives_a_hostile_x_server_in_the_sandbox,
    desktop_survives_pause_resume_and_a_backend_restart,
    desktop_stream_url_opens_connected_in_chromium,
);
