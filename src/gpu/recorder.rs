//! Batched recording: dispatches go into one open compute pass of one command encoder and are
//! submitted together at a readback, at `synchronize`, or when the batch passes `MAX_BATCH`.

/// Dispatches per submission before the batch is flushed on its own. Submitting costs tens of
/// microseconds on lavapipe; recording a dispatch costs about one; a bound keeps the GPU busy
/// while the host records the next batch.
pub(crate) const MAX_BATCH: usize = 64;

#[derive(Default)]
pub(crate) struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    dispatches: usize,
    /// Of `dispatches`, those a replay recorded (they do not count toward `MAX_BATCH`).
    replayed: usize,
    /// While set, every compute pass opened writes begin/end timestamps into the query set.
    pub(crate) timing: Option<Timing>,
}

/// Timestamp queries for the passes recorded while timing is on.
pub(crate) struct Timing {
    pub(crate) set: wgpu::QuerySet,
    /// Next free query index (two per pass).
    pub(crate) next: u32,
    pub(crate) capacity: u32,
}

impl Recorder {
    /// Whether nothing has been recorded since the last submission.
    pub(crate) fn is_empty(&self) -> bool {
        self.encoder.is_none()
    }

    /// Dispatches recorded in the open batch as ops planned them: a replay's are not counted,
    /// since recording them costs the host next to nothing (no reason to start the GPU early),
    /// so a replay, the ops after it and a readback go in one submission.
    pub(crate) fn planned(&self) -> usize {
        self.dispatches - self.replayed
    }

    /// [`Recorder::dispatch`] of a kept dispatch (a replay).
    pub(crate) fn dispatch_replayed(
        &mut self,
        device: &wgpu::Device,
        pipeline: &wgpu::ComputePipeline,
        bind_group: &wgpu::BindGroup,
        workgroups: [u32; 3],
    ) {
        self.dispatch(device, pipeline, bind_group, workgroups);
        self.replayed += 1;
    }

    /// Record one dispatch in the open compute pass, opening one if needed.
    pub(crate) fn dispatch(
        &mut self,
        device: &wgpu::Device,
        pipeline: &wgpu::ComputePipeline,
        bind_group: &wgpu::BindGroup,
        workgroups: [u32; 3],
    ) {
        if self.pass.is_none() {
            let encoder = self.encoder.get_or_insert_with(|| new_encoder(device));
            let writes = match self.timing.as_mut() {
                Some(t) if t.next + 2 <= t.capacity => {
                    t.next += 2;
                    Some(wgpu::ComputePassTimestampWrites {
                        query_set: &t.set,
                        beginning_of_pass_write_index: Some(t.next - 2),
                        end_of_pass_write_index: Some(t.next - 1),
                    })
                }
                _ => None,
            };
            let pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("kiln batch"),
                    timestamp_writes: writes,
                })
                .forget_lifetime();
            self.pass = Some(pass);
        }
        if let Some(pass) = self.pass.as_mut() {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
            self.dispatches += 1;
        }
    }

    /// The open encoder with its compute pass ended, for recording copies after the dispatches.
    pub(crate) fn encoder(&mut self, device: &wgpu::Device) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        self.encoder.get_or_insert_with(|| new_encoder(device))
    }

    /// Drop the open batch unsubmitted (the device is being destroyed).
    pub(crate) fn discard(&mut self) {
        self.pass = None;
        self.dispatches = 0;
        self.replayed = 0;
        self.encoder = None;
        self.timing = None;
    }

    /// End the batch: the command buffer to submit, if anything was recorded.
    pub(crate) fn finish(&mut self) -> Option<wgpu::CommandBuffer> {
        self.pass = None;
        self.dispatches = 0;
        self.replayed = 0;
        self.encoder.take().map(wgpu::CommandEncoder::finish)
    }
}

fn new_encoder(device: &wgpu::Device) -> wgpu::CommandEncoder {
    device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("kiln batch"),
    })
}
