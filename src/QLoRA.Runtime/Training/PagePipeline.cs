using ILGPU.Runtime;
using QLoRA.Runtime.Native;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Training;

/// <summary>
/// The paged optimizers' schedule: page p+1's state uploads on one stream and page p's downloads on another while
/// page p+1 updates on the compute stream — the copies overlap the updates instead of queueing behind them. Two page
/// buffers rotate; CUDA events order the streams (upload before its update, the update before its download, a
/// buffer's download before the upload that reuses it), so the arithmetic and its order are those of one stream.
/// Where events are unavailable (the CPU accelerator) the ordering falls back to host synchronization.
/// </summary>
internal sealed class PagePipeline : IDisposable
{
    private readonly AcceleratorStream _compute, _upload, _download;

    public PagePipeline(Device device)
    {
        _compute = device.Stream;
        _upload = device.Accelerator.CreateStream();
        _download = device.Accelerator.CreateStream();
    }

    /// <summary>Runs <paramref name="pages"/> pages; returns when every page's state is back on the host.</summary>
    /// <param name="pages">Pages of the flat state.</param>
    /// <param name="upload">Queues page p's state into buffer p % 2 on the given stream.</param>
    /// <param name="update">Queues page p's update on the compute stream.</param>
    /// <param name="download">Queues page p's state from buffer p % 2 back to the host on the given stream.</param>
    public void Run(int pages, Action<int, AcceleratorStream> upload, Action<int> update, Action<int, AcceleratorStream> download)
    {
        if (pages == 0)
        {
            return;
        }

        upload(0, _upload);
        for (int p = 0; p < pages; p++)
        {
            CudaEvents.Order(_compute, _upload); // page p's state is on the device
            update(p);
            if (p + 1 < pages)
            {
                CudaEvents.Order(_upload, _download); // buffer (p + 1) % 2 held page p − 1: read back before it is reused
                upload(p + 1, _upload);
            }

            CudaEvents.Order(_download, _compute); // page p is updated
            download(p, _download);
        }

        _download.Synchronize(); // the last download followed the last update: the host state is complete
    }

    public void Dispose()
    {
        _upload.Dispose();
        _download.Dispose();
    }
}
