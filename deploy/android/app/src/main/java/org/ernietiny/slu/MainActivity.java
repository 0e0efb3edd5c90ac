package org.ernietiny.slu;

import android.app.Activity;
import android.os.Bundle;
import android.os.SystemClock;
import android.widget.Button;
import android.widget.EditText;
import android.widget.TextView;
import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;

/** Type an utterance, get the intent and slots back, with the on-device time. */
public class MainActivity extends Activity {
    // The --min_confidence of run_eval.py; benchmarks/decoding_report.py chooses one on dev.
    private static final double MIN_CONFIDENCE = 0.0;
    private SluPredictor predictor;

    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        setContentView(R.layout.activity_main);
        EditText input = findViewById(R.id.utterance);
        TextView output = findViewById(R.id.result);
        Button run = findViewById(R.id.run);
        try {
            predictor = new SluPredictor(copyModelFromAssets().getAbsolutePath(), 1, MIN_CONFIDENCE);
        } catch (IOException | RuntimeException e) {
            output.setText("cannot load the model: " + e.getMessage());
            run.setEnabled(false);
            return;
        }
        run.setOnClickListener(v -> {
            long start = SystemClock.elapsedRealtimeNanos();
            String json = predictor.predict(input.getText().toString());
            double ms = (SystemClock.elapsedRealtimeNanos() - start) / 1e6;
            output.setText(json + "\n\n" + String.format("%.2f ms (tokenization + model + decoding)", ms));
        });
    }

    /** Paddle Lite and the tokenizer read files, so the bundled assets are copied out once. */
    private File copyModelFromAssets() throws IOException {
        File dir = new File(getFilesDir(), "slu_model");
        if (!dir.isDirectory() && !dir.mkdirs()) throw new IOException("cannot create " + dir);
        byte[] buffer = new byte[1 << 16];
        for (String name : SluPredictor.assetNames()) {
            try (InputStream in = getAssets().open(name); OutputStream out = new FileOutputStream(new File(dir, name))) {
                for (int n; (n = in.read(buffer)) > 0; ) out.write(buffer, 0, n);
            }
        }
        return dir;
    }

    @Override
    protected void onDestroy() {
        if (predictor != null) predictor.close();
        super.onDestroy();
    }
}
